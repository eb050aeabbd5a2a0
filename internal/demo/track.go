package demo

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// stage is how far a study has come; each is reported once per event.
type stage int

const (
	received stage = iota
	stable
	queued
	forwarded
	verified
	failed
)

// Messages of stowline's log the tracker follows. If one is renamed, the
// demo's test fails: the demo then no longer reports that stage.
const (
	msgEventAccepted = "event accepted"
	msgReconciled    = "study announced by the reconciler (its webhook event was missing)"
	msgForwarded     = "study forwarded"
	msgRetry         = "study not forwarded; will retry"
	msgDeadLettered  = "study dead-lettered"
)

// pollInterval is how often the hospital's studies are listed (to see
// them arrive and become stable) and a forwarded study whose instances
// are not all on the archive yet is checked again.
const pollInterval = 500 * time.Millisecond

// verifyAttempts bounds the checks of a forwarded study before its
// difference from the archive is reported as a failure.
const verifyAttempts = 10

// record is the part of a stowline log line the tracker reads.
type record struct {
	Level            string `json:"level"`
	Msg              string `json:"msg"`
	OrthancStudyID   string `json:"orthanc_study_id"`
	StudyInstanceUID string `json:"study_instance_uid"`
	StreamSeq        uint64 `json:"stream_seq"`
	Duplicate        bool   `json:"duplicate"`
	Instances        int    `json:"instances"`
	Bytes            int64  `json:"bytes"`
	Requests         int    `json:"requests"`
	DurationMS       int64  `json:"duration_ms"`
	Attempt          int    `json:"attempt"`
	Class            string `json:"class"`
	Err              string `json:"err"`
	RetryIn          string `json:"retry_in"`
}

// study is what the tracker knows of one study of the hospital.
type study struct {
	id, uid      string
	stage        stage
	verifyTries  int
	failure      error
	reportedSeen bool
}

// tracker follows studies through stowline: it reads stowline's log
// records and polls both Orthancs, and prints each step.
type tracker struct {
	out               *printer
	hospital, archive *testharness.Orthanc
	files             *http.Client

	// queue holds log records not handled yet: logLine never blocks
	// stowline's logging, whatever the tracker is doing.
	qmu    sync.Mutex
	queue  []record
	notify chan struct{}

	mu      sync.Mutex
	studies map[string]*study // by Orthanc study ID
	changed chan struct{}     // closed and replaced on every change
}

func newTracker(out *printer, hospital, archive *testharness.Orthanc) *tracker {
	return &tracker{
		out: out, hospital: hospital, archive: archive,
		files:   &http.Client{Timeout: time.Minute},
		notify:  make(chan struct{}, 1),
		studies: map[string]*study{},
		changed: make(chan struct{}),
	}
}

// logLine takes one line of stowline's JSON log.
func (t *tracker) logLine(line []byte) {
	var r record
	if json.Unmarshal(line, &r) != nil {
		return
	}
	switch r.Msg {
	case msgEventAccepted, msgReconciled, msgForwarded, msgRetry, msgDeadLettered:
	default:
		if r.Level != "WARN" && r.Level != "ERROR" {
			return
		}
	}
	t.qmu.Lock()
	t.queue = append(t.queue, r)
	t.qmu.Unlock()
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// run follows the studies until ctx ends.
func (t *tracker) run(ctx context.Context) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.notify:
			t.qmu.Lock()
			recs := t.queue
			t.queue = nil
			t.qmu.Unlock()
			for _, r := range recs {
				t.handle(ctx, r)
			}
		case <-tick.C:
			t.poll(ctx)
		}
	}
}

// wait waits until every study of ids is verified, one failed, stowline
// stopped or ctx ended.
func (t *tracker) wait(ctx context.Context, s *stowline, ids []string) error {
	for {
		t.mu.Lock()
		done := 0
		var errs []error
		for _, id := range ids {
			st := t.studies[id]
			switch {
			case st == nil:
			case st.stage == verified:
				done++
			case st.stage == failed:
				errs = append(errs, fmt.Errorf("study %s: %w", st.uid, st.failure))
			}
		}
		changed := t.changed
		t.mu.Unlock()
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if done == len(ids) {
			return nil
		}
		select {
		case <-changed:
		case err := <-s.done:
			return fmt.Errorf("stowline stopped: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("%d of %d studies verified: %s: %w", done, len(ids), t.stuck(ids), ctx.Err())
		}
	}
}

// stuck says where the studies of ids that are not verified are.
func (t *tracker) stuck(ids []string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	names := [...]string{"received", "stable", "queued", "forwarded", "verified", "failed"}
	var parts []string
	for _, id := range ids {
		switch st := t.studies[id]; {
		case st == nil:
			parts = append(parts, id+" not seen")
		case st.stage != verified:
			parts = append(parts, st.uid+" "+names[st.stage])
		}
	}
	return strings.Join(parts, ", ")
}

// set moves a study to a stage and wakes wait.
func (t *tracker) set(s *study, to stage, failure error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s.stage, s.failure = to, failure
	close(t.changed)
	t.changed = make(chan struct{})
}

// study returns the study of the hospital with Orthanc ID id, learning
// its UID from the hospital the first time.
func (t *tracker) study(ctx context.Context, id, uid string) *study {
	t.mu.Lock()
	s := t.studies[id]
	t.mu.Unlock()
	if s != nil {
		return s
	}
	if uid == "" {
		var info studyInfo
		if err := t.hospital.Do(ctx, http.MethodGet, "/studies/"+id, nil, &info); err == nil {
			uid = info.MainDicomTags.StudyInstanceUID
		}
	}
	if uid == "" {
		uid = "(Orthanc study " + id + ")"
	}
	s = &study{id: id, uid: uid}
	t.mu.Lock()
	t.studies[id] = s
	t.mu.Unlock()
	return s
}

type studyInfo struct {
	ID            string
	IsStable      bool
	MainDicomTags struct{ StudyInstanceUID string }
}

// poll lists the hospital's studies: new ones are reported received,
// stable ones stable; forwarded ones not verified yet are checked again.
func (t *tracker) poll(ctx context.Context) {
	var list []studyInfo
	if err := t.hospital.Do(ctx, http.MethodGet, "/studies?expand", nil, &list); err != nil {
		return // Orthanc busy or stopping: the next tick tries again
	}
	for _, in := range list {
		s := t.study(ctx, in.ID, in.MainDicomTags.StudyInstanceUID)
		if !s.reportedSeen {
			s.reportedSeen = true
			t.out.printf("received   %s", s.uid)
		}
		if s.stage >= verified && !in.IsStable {
			// New instances arrived in a study already done: it goes
			// around again (Orthanc announces it stable again).
			t.set(s, received, nil)
			t.out.printf("received   %s  (more instances)", s.uid)
		}
		if in.IsStable && s.stage < stable {
			t.reportStable(ctx, s)
		}
	}
	t.mu.Lock()
	var retry []*study
	for _, s := range t.studies {
		if s.stage == forwarded {
			retry = append(retry, s)
		}
	}
	t.mu.Unlock()
	for _, s := range retry {
		t.verify(ctx, s)
	}
}

func (t *tracker) reportStable(ctx context.Context, s *study) {
	n := "? instances"
	if insts, err := t.instances(ctx, t.hospital, s.id); err == nil {
		n = count(len(insts), "instance")
	}
	t.set(s, stable, nil)
	t.out.printf("stable     %s  %s", s.uid, n)
}

func (t *tracker) handle(ctx context.Context, r record) {
	if r.OrthancStudyID == "" {
		// A warning of stowline's about no study in particular.
		if r.Err != "" {
			t.out.printf("stowline %s: %s (%s)", strings.ToLower(r.Level), r.Msg, r.Err)
		} else {
			t.out.printf("stowline %s: %s", strings.ToLower(r.Level), r.Msg)
		}
		return
	}
	s := t.study(ctx, r.OrthancStudyID, r.StudyInstanceUID)
	switch r.Msg {
	case msgEventAccepted, msgReconciled:
		if r.Duplicate && s.stage >= queued && s.stage != failed {
			return // the same event again (script and reconciler): JetStream kept one
		}
		if s.stage < stable {
			// Orthanc announced it stable before the next poll saw it.
			t.reportStable(ctx, s)
		}
		how := "by the Lua script's webhook"
		if r.Msg == msgReconciled {
			how = "by the reconciler (Orthanc's change log)"
		}
		t.set(s, queued, nil)
		t.out.printf("queued     %s  JetStream seq %d, %s", s.uid, r.StreamSeq, how)
	case msgForwarded:
		t.set(s, forwarded, nil)
		s.verifyTries = 0
		t.out.printf("forwarded  %s  %s, %s in %s, %d ms", s.uid, count(r.Instances, "instance"), size(r.Bytes), count(r.Requests, "STOW-RS request"), r.DurationMS)
		t.verify(ctx, s)
	case msgRetry:
		t.out.printf("retrying   %s  attempt %d failed (%s: %s); next in %s", s.uid, r.Attempt, r.Class, r.Err, r.RetryIn)
	case msgDeadLettered:
		err := fmt.Errorf("dead-lettered (%s): %s", r.Class, r.Err)
		t.set(s, failed, err)
		t.out.printf("FAILED     %s  %v; see the status page", s.uid, err)
	default:
		t.out.printf("stowline %s: %s  %s (%s)", strings.ToLower(r.Level), s.uid, r.Msg, r.Err)
	}
}

// errNotYet: the archive does not hold every instance yet.
var errNotYet = errors.New("not every instance is on the archive yet")

// verify compares the study's instances on the hospital with the same
// SOP instances on the archive, by the MD5 of each DICOM file as both
// Orthancs' REST APIs serve it.
func (t *tracker) verify(ctx context.Context, s *study) {
	n, err := t.compare(ctx, s)
	switch {
	case err == nil:
		t.set(s, verified, nil)
		t.out.printf("verified   %s  %d/%d instances identical on the archive (MD5 of each DICOM file)", s.uid, n, n)
	case errors.Is(err, errNotYet) && s.verifyTries+1 < verifyAttempts:
		s.verifyTries++ // checked again at the next poll
	case ctx.Err() != nil:
	default:
		t.set(s, failed, err)
		t.out.printf("FAILED     %s  %v", s.uid, err)
	}
}

func (t *tracker) compare(ctx context.Context, s *study) (int, error) {
	want, err := t.instances(ctx, t.hospital, s.id)
	if err != nil {
		return 0, fmt.Errorf("hospital: %w", err)
	}
	// Orthanc keys a study by patient and StudyInstanceUID: the archive
	// may hold the UID under more than one study.
	var found []struct{ ID, Type string }
	if err := t.archive.Do(ctx, http.MethodPost, "/tools/lookup", strings.NewReader(s.uid), &found); err != nil {
		return 0, fmt.Errorf("archive: %w", err)
	}
	got := map[string]string{}
	for _, f := range found {
		if f.Type != "Study" {
			continue
		}
		insts, err := t.instances(ctx, t.archive, f.ID)
		if err != nil {
			return 0, fmt.Errorf("archive: %w", err)
		}
		for uid, id := range insts {
			got[uid] = id
		}
	}
	for sop, hid := range want {
		aid, ok := got[sop]
		if !ok {
			return 0, fmt.Errorf("SOP instance %s: %w", sop, errNotYet)
		}
		hsum, err := t.fileMD5(ctx, t.hospital, hid)
		if err != nil {
			return 0, fmt.Errorf("hospital: %w", err)
		}
		asum, err := t.fileMD5(ctx, t.archive, aid)
		if err != nil {
			return 0, fmt.Errorf("archive: %w", err)
		}
		if hsum != asum {
			return 0, fmt.Errorf("SOP instance %s differs: MD5 %s on the hospital, %s on the archive", sop, hsum, asum)
		}
	}
	return len(want), nil
}

// instances returns SOPInstanceUID -> Orthanc instance ID of a study.
func (t *tracker) instances(ctx context.Context, o *testharness.Orthanc, studyID string) (map[string]string, error) {
	var list []struct {
		ID            string
		MainDicomTags struct{ SOPInstanceUID string }
	}
	if err := o.Do(ctx, http.MethodGet, "/studies/"+studyID+"/instances", nil, &list); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(list))
	for _, in := range list {
		out[in.MainDicomTags.SOPInstanceUID] = in.ID
	}
	return out, nil
}

// fileMD5 is the hex MD5 of GET /instances/{id}/file.
func (t *tracker) fileMD5(ctx context.Context, o *testharness.Orthanc, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL+"/instances/"+id+"/file", nil)
	if err != nil {
		return "", err
	}
	// Orthanc gzips for clients that accept it: useless on loopback.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := t.files.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /instances/%s/file: %s", id, resp.Status)
	}
	h := md5.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", fmt.Errorf("GET /instances/%s/file: %w", id, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// studyIDs lists the Orthanc IDs of o's studies.
func studyIDs(ctx context.Context, o *testharness.Orthanc) ([]string, error) {
	var ids []string
	if err := o.Do(ctx, http.MethodGet, "/studies", nil, &ids); err != nil {
		return nil, fmt.Errorf("hospital: %w", err)
	}
	return ids, nil
}

// count says "1 instance", "2 instances".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// size formats a byte count as the status page does (binary units).
func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
