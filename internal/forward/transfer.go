package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

// Report says what one attempt sent.
type Report struct {
	// Listed is the number of instances Orthanc listed for the study.
	Listed int
	// Selected is how many of them the destination's rules select;
	// NotSelected is true when that is none (the study is not for it).
	Selected    int
	NotSelected bool
	// Instances the destination confirmed (stored or already stored).
	Instances int
	Bytes     int64
	Requests  int
	// AlreadyStored counts instances the destination already had.
	AlreadyStored int
	// Resent counts instances sent again after a transient refusal.
	Resent int
	// Verify is the time spent asking the destination which instances it
	// holds (STOW_VERIFY=qido), every round.
	Verify time.Duration
	// forwarded are the instances sent, set only when the destination
	// confirmed every one (buffer mode deletes them); listed are all the
	// study's instances.
	forwarded, listed []orthancapi.Instance
}

func (r *Report) add(o Report) {
	r.Instances += o.Instances
	r.Bytes += o.Bytes
	r.Requests += o.Requests
	r.AlreadyStored += o.AlreadyStored
	r.Resent += o.Resent
}

// transfer sends every instance of the attempt's study to the destination.
// It returns nil only when the destination confirmed every SOP instance;
// otherwise an error that Classify understands. Instances the destination
// refused transiently are re-sent alone, up to InstanceRetries rounds.
func (f *Forwarder) transfer(ctx context.Context, a *Attempt) (Report, error) {
	ev := a.Event
	var rep Report
	src, err := f.opts.SourceFor(ev.Source)
	if err != nil {
		return rep, &Error{Class: Permanent, Err: err}
	}
	lctx, span := f.startSpan(ctx, "orthanc list instances", trace.SpanKindClient)
	instances, err := src.StudyInstances(lctx, ev.OrthancStudyID)
	if span.IsRecording() {
		span.SetAttributes(tracing.Source.String(ev.Source), tracing.OrthancStudyID.String(ev.OrthancStudyID), tracing.Instances.Int(len(instances)))
	}
	endSpan(span, err)
	if err != nil {
		if errors.Is(err, orthancapi.ErrNotFound) {
			return rep, Errorf(SourceMissing, "study %s is no longer in Orthanc source %s: %w", ev.OrthancStudyID, ev.Source, err)
		}
		return rep, fmt.Errorf("list instances of study %s: %w", ev.OrthancStudyID, err)
	}
	if len(instances) == 0 {
		return rep, Errorf(SourceMissing, "study %s has no instances in Orthanc source %s", ev.OrthancStudyID, ev.Source)
	}
	rep.Listed, rep.listed = len(instances), instances
	if f.opts.Router != nil {
		rctx, span := f.startSpan(ctx, "route", trace.SpanKindInternal)
		instances, err = f.opts.Router.Select(rctx, ev.Source, ev.OrthancStudyID, instances)
		if span.IsRecording() {
			span.SetAttributes(tracing.Listed.Int(rep.Listed), tracing.Selected.Int(len(instances)))
		}
		endSpan(span, err)
		if err != nil {
			return rep, fmt.Errorf("routing rules: %w", err)
		}
		if len(instances) == 0 {
			rep.NotSelected = true
			return rep, nil
		}
	}
	rep.Selected = len(instances)
	f.obs.Progress(a, rep)
	pending := make([]dicomweb.Part, len(instances))
	for i, inst := range instances {
		pending[i] = dicomweb.Part{
			SOPInstanceUID: inst.SOPInstanceUID,
			Size:           inst.FileSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) {
				rc, _, err := src.OpenInstanceFile(ctx, inst.ID)
				return rc, err
			},
		}
	}
	all := pending
	var rejected []Instance
	for round := 0; ; round++ {
		var retry []dicomweb.Part
		outs, err := f.sendAll(ctx, a, dicomweb.Batches(pending, f.requestSize(len(pending)), f.opts.MaxBytes), &rep)
		if err != nil {
			return rep, err
		}
		for _, out := range outs {
			retry = append(retry, out.retry...)
			rejected = append(rejected, out.rejected...)
		}
		unlisted := false
		if len(retry) == 0 && len(rejected) == 0 && f.opts.Verifier != nil {
			// Every instance confirmed: does the archive list them?
			if retry, err = f.verify(ctx, ev.StudyInstanceUID, all, &rep); err != nil {
				return rep, err
			}
			unlisted = len(retry) > 0
			// Not held after all: counted again once confirmed again.
			rep.Instances -= len(retry)
		}
		if len(retry) == 0 {
			break
		}
		if round >= f.opts.InstanceRetries {
			if unlisted {
				return rep, missingError(retry, len(all), round+1)
			}
			return rep, fmt.Errorf("%d instances still refused transiently after %d rounds (first: %s)",
				len(retry), round+1, retry[0].SOPInstanceUID)
		}
		what := "re-sending instances the destination refused transiently"
		if unlisted {
			what = "re-sending instances the destination confirmed but does not list (STOW_VERIFY=qido)"
		}
		f.log.Warn(what, "orthanc_study_id", ev.OrthancStudyID,
			"study_instance_uid", ev.StudyInstanceUID, "instances", len(retry), "round", round+1)
		sleep(ctx, f.opts.InstanceRetryDelay<<round)
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Resent += len(retry)
		f.m.resent.Add(float64(len(retry)))
		pending = retry
	}
	if len(rejected) > 0 {
		return rep, &Error{
			Class:     Partial,
			Err:       fmt.Errorf("destination refused %d of %d instances for good (first: %s: %s)", len(rejected), len(instances), rejected[0].SOPInstanceUID, rejected[0].Text),
			Instances: rejected,
		}
	}
	rep.forwarded = instances
	return rep, nil
}

// requestSize spreads n instances over a multiple of RequestConcurrency
// requests of at most MaxInstances, so parallel requests finish together
// (300 instances, 100 a request, 2 at once: 4 requests of 75, not 3 of 100).
func (f *Forwarder) requestSize(n int) int {
	p := max(f.opts.RequestConcurrency, 1)
	reqs := (n + f.opts.MaxInstances - 1) / f.opts.MaxInstances
	reqs = (reqs + p - 1) / p * p
	return max((n+reqs-1)/max(reqs, 1), 1)
}

// sendAll sends the batches, up to RequestConcurrency at once, and returns
// their outcomes in batch order. The first error stops the requests still
// running (their context is cancelled) and is returned. Each answered
// request is reported to the observer.
func (f *Forwarder) sendAll(ctx context.Context, a *Attempt, batches [][]dicomweb.Part, rep *Report) ([]batchOutcome, error) {
	outs := make([]batchOutcome, len(batches))
	var mu sync.Mutex // guards rep
	sendOne := func(ctx context.Context, batch []dicomweb.Part) (out batchOutcome, err error) {
		defer func() {
			// A panic in a request goroutine would end the process; as a
			// crash failure it dead-letters the study instead.
			if v := recover(); v != nil {
				err = &Error{Class: Crash, Err: newCrashError(v)}
			}
		}()
		var local Report
		out, err = f.send(ctx, batch, &local)
		mu.Lock()
		rep.add(local)
		progress := *rep
		mu.Unlock()
		f.obs.Progress(a, progress)
		return out, err
	}
	if f.opts.RequestConcurrency <= 1 {
		for i, batch := range batches {
			out, err := sendOne(ctx, batch)
			if err != nil {
				return nil, fmt.Errorf("STOW-RS request %d: %w", rep.Requests, err)
			}
			outs[i] = out
		}
		return outs, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg  sync.WaitGroup
		sem = make(chan struct{}, f.opts.RequestConcurrency)
	)
	for i, batch := range batches {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			out, err := sendOne(ctx, batch)
			if err != nil {
				cancel(fmt.Errorf("STOW-RS request for batch %d of %d: %w", i+1, len(batches), err))
				return
			}
			outs[i] = out
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return outs, nil
}

// batchOutcome sorts a request's instances by what to do next.
type batchOutcome struct {
	retry    []dicomweb.Part
	rejected []Instance
}

// send stores one batch and sorts its instances by the response. This is
// the one place a 401 is handled: the auth transport has dropped the
// refused token, so one retry carries a fresh one; a second 401 is a
// permanent failure (ClassifyStatus).
func (f *Forwarder) send(ctx context.Context, batch []dicomweb.Part, rep *Report) (batchOutcome, error) {
	rep.Requests++
	res, err := f.store(ctx, batch)
	var he *dicomweb.HTTPError
	if errors.As(err, &he) && he.StatusCode == http.StatusUnauthorized {
		rep.Requests++
		f.m.authRetries.Inc()
		res, err = f.store(ctx, batch)
	}
	if err != nil {
		// A STOW response on an error status still says per instance
		// what happened (Orthanc answers 400 when one part is broken and
		// stores the rest; 409 lists conflicts).
		if !errors.As(err, &he) || he.Result == nil || len(he.Result.Stored)+len(he.Result.Failed) == 0 {
			return batchOutcome{}, err
		}
		res = he.Result
		res.StatusCode = he.StatusCode
	}
	out := f.sortAnswer(batch, res, rep)
	rep.Bytes += res.BytesSent
	f.m.bytes.Add(float64(res.BytesSent))
	return out, nil
}

// sortAnswer sorts a batch's instances by the destination's answer:
// confirmed (counted in rep), to send again, or refused for good.
func (f *Forwarder) sortAnswer(batch []dicomweb.Part, res *dicomweb.Result, rep *Report) batchOutcome {
	stored := make(map[string]bool, len(res.Stored))
	for _, in := range res.Stored {
		stored[in.SOPInstanceUID] = true
	}
	failed := make(map[string]int, len(res.Failed))
	for _, fi := range append(res.Failed, res.OtherFailures...) {
		failed[fi.SOPInstanceUID] = fi.FailureReason
	}
	var out batchOutcome
	confirmed := 0
	for _, p := range batch {
		if stored[p.SOPInstanceUID] {
			confirmed++
			continue
		}
		reason, listed := failed[p.SOPInstanceUID]
		if !listed {
			// Neither stored nor failed: after a success status, send it
			// again; after an error status, the status decides.
			if ClassifyStatus(res.StatusCode) == Transient {
				out.retry = append(out.retry, p)
			} else {
				out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID,
					Text: fmt.Sprintf("not listed in the destination's HTTP %d response", res.StatusCode)})
			}
			continue
		}
		switch ClassifyInstance(reason) {
		case Stored:
			confirmed++
			rep.AlreadyStored++
			f.m.alreadyStored.Inc()
		case Retry:
			out.retry = append(out.retry, p)
		default:
			out.rejected = append(out.rejected, Instance{SOPInstanceUID: p.SOPInstanceUID,
				FailureReason: reason, Text: Describe(reason)})
		}
	}
	rep.Instances += confirmed
	f.m.instances.Add(float64(confirmed))
	return out
}
