// Package deadletter keeps the studies that could not be forwarded, with
// why, in their own JetStream stream, and puts them back in the queue on
// request (replay). Nothing leaves the dead-letter stream before its
// replacement is safely stored in the event stream.
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/inorder"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/tracing"
)

// MaxResponseBytes bounds the destination response kept with a letter.
const MaxResponseBytes = 2048

// MaxRawBytes bounds the bytes kept of an event the forwarder could not
// read (forward.RawEvent): stowline's events are well under a kilobyte,
// and a letter must fit a JetStream message. A letter that keeps only
// the start of its event cannot be replayed.
const MaxRawBytes = 64 << 10

// A message that is no event of stowline's (no JSON object with a type
// of Orthanc's, "orthanc.", and a version) keeps only its first
// maxForeignBytes, no headers, and cannot be replayed: a publisher
// writing anything on the event subjects would otherwise fill JetStream
// with letters of it, 64 KiB each and per destination, for
// DEADLETTER_RETENTION. An event's headers past maxRawHeaderBytes are
// dropped: it is replayed without them (trace context only).
const (
	maxForeignBytes   = 1 << 10
	maxRawHeaderBytes = 4 << 10
)

// keptRaw is what a letter keeps of a message the forwarder could not
// read.
func keptRaw(raw forward.RawEvent) *forward.RawEvent {
	headers := 0
	for k, vs := range raw.Header {
		for _, v := range vs {
			headers += len(k) + len(v)
		}
	}
	if headers > maxRawHeaderBytes {
		raw.Header = nil
	}
	// The envelope, not this build's event type: a newer ingest's other
	// types are events too, for a replay once the forwarders read them.
	var head struct {
		Type    string `json:"type"`
		Version *int   `json:"version"`
	}
	limit := MaxRawBytes
	if json.Unmarshal(raw.Data, &head) != nil || !strings.HasPrefix(head.Type, "orthanc.") || head.Version == nil {
		limit, raw.Header, raw.Partial = maxForeignBytes, nil, true
	}
	if len(raw.Data) > limit {
		raw.Data, raw.Size, raw.Partial = raw.Data[:limit], len(raw.Data), true
	}
	return &raw
}

// MaxLetterFailures bounds the failed instances a letter names, and
// MaxFailureText the characters of each one's text when the letter would
// pass maxLetterBytes (whole texts otherwise: their end often says what
// to do), so that a letter fits a JetStream message (1 MB by default)
// however many instances failed: the rest are counted (MoreFailures). A
// replay sends the whole study again all the same.
const (
	MaxLetterFailures = 1000
	MaxFailureText    = 300
	maxLetterBytes    = 512 << 10
)

// Entry is a letter with its position in the dead-letter stream.
type Entry struct {
	Seq uint64 `json:"seq"`
	forward.DeadLetter
}

// UnreadableLetter is the class of an Entry that stands for a stored
// letter this build cannot decode (one of a newer build that changed a
// field, a message published by hand on the dead-letter subjects): its
// reason is the decode error, its destination the one its subject names,
// its DeadLetteredAt when NATS stored it, and it has no event. It is
// listed, selected by sequence, destination, time, this class or All,
// purged, and never replayed. Not to be confused with a letter of an event the
// forwarder could not read (class permanent, reason "undecodable: ..."),
// which decodes.
const UnreadableLetter forward.Class = "unreadable-letter"

// ErrNotFound is returned for a sequence that holds no dead letter.
var ErrNotFound = errors.New("dead letter not found")

// ErrNoConsumer is why a replay, a re-forward or a backfill is refused
// when no consumer of the destination would take its events.
var ErrNoConsumer = errors.New("no consumer takes the destination's events")

// ErrPartialLetters is why a replay passed letters over: they keep only
// part of a message the forwarder could not read (no event of
// stowline's, or one past MaxRawBytes). The others were replayed; trying
// again cannot help.
var ErrPartialLetters = errors.New("dead letters keep only part of a message the forwarder could not read (not an event of stowline's, or past 64 KiB): not replayed; purge them")

// ErrUnreadableLetters is why a replay passed letters over that this
// build cannot decode (UnreadableLetter). The others were replayed; a
// forwarder of the build that wrote them may replay them, or purge them.
var ErrUnreadableLetters = errors.New("dead letters this build cannot decode (written by a newer build, or not a letter): not replayed; replay them with a forwarder of the build that wrote them, or purge them")

// Store is the dead-letter stream.
type Store struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

// NewStore returns the store of the dead-letter stream (natsjs provisions it).
func NewStore(js jetstream.JetStream, stream jetstream.Stream) *Store {
	return &Store{js: js, stream: stream}
}

// Add stores a letter. It is idempotent per original event sequence
// within the stream's dedupe window (EVENTS_DEDUPE_WINDOW: natsjs.Topology), so a
// forwarder that dies between Add and terminating the original, or whose
// Add was stored but not confirmed, does not leave two letters: duplicate
// reports a letter an earlier Add stored (JetStream's publish ack says
// so), and seq is that letter's.
func (s *Store) Add(ctx context.Context, l *forward.DeadLetter) (seq uint64, duplicate bool, err error) {
	if len(l.LastResponse) > MaxResponseBytes {
		l.LastResponse = l.LastResponse[:MaxResponseBytes] + "…"
	}
	if l.Raw != nil {
		l.Raw = keptRaw(*l.Raw)
	}
	if n := len(l.Failures); n > MaxLetterFailures {
		l.Failures, l.MoreFailures = l.Failures[:MaxLetterFailures], l.MoreFailures+n-MaxLetterFailures
	}
	data, err := json.Marshal(l)
	if err == nil && len(data) > maxLetterBytes && slices.ContainsFunc(l.Failures, longFailureText) {
		kept := slices.Clone(l.Failures)
		for i := range kept {
			kept[i].Text = ellipsis.Truncate(kept[i].Text, MaxFailureText)
		}
		l.Failures = kept
		data, err = json.Marshal(l)
	}
	// Texts that JSON escapes at 6 bytes a character could still make
	// it too large: name fewer.
	for err == nil && len(data) > maxLetterBytes && len(l.Failures) > 0 {
		half := len(l.Failures) / 2
		l.Failures, l.MoreFailures = l.Failures[:half], l.MoreFailures+len(l.Failures)-half
		data, err = json.Marshal(l)
	}
	if err != nil {
		return 0, false, fmt.Errorf("encode dead letter: %w", err)
	}
	sum, err := summaryHeader(l)
	if err != nil {
		return 0, false, fmt.Errorf("encode dead letter summary: %w", err)
	}
	dest := DestinationOf(l)
	msg := &nats.Msg{Subject: natsjs.DeadLetterSubject(dest, l.Event.Source), Data: data, Header: nats.Header{}}
	msg.Header.Set(summaryHeaderName, sum)
	msg.Header.Set(jetstream.MsgIDHeader, "dl/"+dest+"/"+strconv.FormatUint(l.OriginalSeq, 10)+"/"+l.Event.MsgID())
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(natsjs.DeadLetterStream))
	if err != nil {
		return 0, false, fmt.Errorf("store dead letter for study %s: %w", l.Event.OrthancStudyID, natsjs.StorageFull(err))
	}
	return ack.Sequence, ack.Duplicate, nil
}

func longFailureText(fi forward.Instance) bool {
	return utf8.RuneCountInString(fi.Text) > MaxFailureText
}

// DestinationOf is the destination a letter failed at: letters from
// before destinations name none and were the default destination's.
func DestinationOf(l *forward.DeadLetter) string {
	if l.Destination == "" {
		return natsjs.DefaultDestination
	}
	return l.Destination
}

// Filter selects dead letters. Empty fields match everything. Replay and
// Purge refuse an empty filter with All unset, so "replay everything" or
// "purge everything" is always explicit; List lists every letter for it.
type Filter struct {
	// Destination selects the letters of one destination.
	Destination string
	// Source selects the letters of one source Orthanc's studies: with
	// ORTHANC_SOURCES two sources may hold the same StudyInstanceUID.
	Source           string
	Seq              uint64
	StudyInstanceUID string
	OrthancStudyID   string
	Class            forward.Class
	// ReasonContains matches a substring of the reason, case-insensitive.
	ReasonContains string
	Since          time.Time
	All            bool
}

// Empty reports whether f selects nothing.
func (f Filter) Empty() bool {
	return !f.All && f.Destination == "" && f.Source == "" && f.Seq == 0 && f.StudyInstanceUID == "" && f.OrthancStudyID == "" &&
		f.Class == "" && f.ReasonContains == "" && f.Since.IsZero()
}

func (f Filter) match(e *Entry) bool {
	if e.Class == UnreadableLetter {
		// Only what is known of it selects it: its reason is the decode
		// error, which --reason undecodable (the forwarder's letters of
		// events it could not read) must not take. Its destination as
		// shown: a subject that names none shows the default.
		return (f.Destination == "" || DestinationOf(&e.DeadLetter) == f.Destination) && f.Source == "" && (f.Seq == 0 || e.Seq == f.Seq) &&
			f.StudyInstanceUID == "" && f.OrthancStudyID == "" && (f.Class == "" || f.Class == UnreadableLetter) && f.ReasonContains == "" &&
			(f.Since.IsZero() || !e.DeadLetteredAt.Before(f.Since))
	}
	switch {
	case f.Destination != "" && DestinationOf(&e.DeadLetter) != f.Destination,
		f.Source != "" && e.Event.Source != f.Source,
		f.Seq != 0 && e.Seq != f.Seq,
		f.StudyInstanceUID != "" && e.Event.StudyInstanceUID != f.StudyInstanceUID,
		f.OrthancStudyID != "" && e.Event.OrthancStudyID != f.OrthancStudyID,
		f.Class != "" && e.Class != f.Class,
		f.ReasonContains != "" && !strings.Contains(strings.ToLower(e.Reason), strings.ToLower(f.ReasonContains)),
		!f.Since.IsZero() && e.DeadLetteredAt.Before(f.Since):
		return false
	}
	return true
}

// Get returns the letter at seq.
func (s *Store) Get(ctx context.Context, seq uint64) (*Entry, error) {
	raw, err := s.stream.GetMsg(ctx, seq)
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: sequence %d", ErrNotFound, seq)
		}
		return nil, fmt.Errorf("read dead letter %d: %w", seq, err)
	}
	return decode(raw.Sequence, raw.Subject, raw.Time, raw.Data), nil
}

// decode reads the letter stored at seq on subject at stored; one this
// build cannot decode becomes an UnreadableLetter entry, so that it
// blocks no listing, replay or purge of the others and can be purged.
func decode(seq uint64, subject string, stored time.Time, data []byte) *Entry {
	e := &Entry{Seq: seq}
	err := json.Unmarshal(data, &e.DeadLetter)
	if err == nil {
		return e
	}
	e = &Entry{Seq: seq}
	e.Class, e.DeadLetteredAt = UnreadableLetter, stored
	e.Reason = "this build cannot decode the dead letter: " + err.Error()
	if d, ok := natsjs.DestinationOfDeadLetterSubject(subject); ok {
		e.Destination = d
	} else {
		e.Reason += " (stored on " + subject + ", which names no destination)"
	}
	return e
}

// List returns the letters f selects (every letter if f.All), oldest
// first; never nil, so that JSON shows none as [].
func (s *Store) List(ctx context.Context, f Filter) ([]Entry, error) {
	entries, _, err := s.Page(ctx, f, 0, 0, 0)
	return entries, err
}

// errPageFull ends a Page's read once it found a letter past its limit.
var errPageFull = errors.New("page full")

// Page lists, oldest first, the letters f selects whose sequence is above
// after, at most limit of them and, past the first, at most maxBytes of
// stored letters (0: no limit); more reports that another letter f
// selects follows the last one returned: the next page starts after its
// Seq. Pages keep an admin API's answer bounded: a letter may hold up to
// maxLetterBytes.
func (s *Store) Page(ctx context.Context, f Filter, after uint64, limit, maxBytes int) (entries []Entry, more bool, err error) {
	entries, _, more, err = s.page(ctx, f, after, limit, maxBytes)
	return entries, more, err
}

// page is Page, with each letter's stored size (0 for a letter asked by
// its sequence).
func (s *Store) page(ctx context.Context, f Filter, after uint64, limit, maxBytes int) (entries []Entry, sizes []int, more bool, err error) {
	if f.Seq != 0 {
		if f.Seq <= after {
			return []Entry{}, nil, false, nil
		}
		e, err := s.Get(ctx, f.Seq)
		if errors.Is(err, ErrNotFound) {
			return []Entry{}, nil, false, nil
		}
		if err != nil {
			return nil, nil, false, err
		}
		if !f.match(e) {
			return []Entry{}, nil, false, nil
		}
		return []Entry{*e}, []int{0}, false, nil
	}
	subjects, none, err := s.subjectFilters(ctx, f)
	if err != nil || none {
		return []Entry{}, nil, false, err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: subjects}
	switch {
	case after > 0:
		// match applies Since to the letters read from there.
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = after + 1
	case !f.Since.IsZero():
		// The stream starts at NATS's storage time, the filter is on the
		// forwarder's DeadLetteredAt: reading from a margin earlier keeps
		// a forwarder whose clock runs ahead of NATS's from hiding its
		// letters; match drops the extra ones.
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		since := f.Since.Add(-sinceClockMargin)
		cfg.OptStartTime = &since
	}
	out := []Entry{}
	batch, size := 0, 0
	if limit > 0 {
		batch = limit + 1 // what the page can take, not a whole fetch of letters
	}
	fetchBytes := 0
	if maxBytes > 0 {
		fetchBytes = max(maxBytes/4, 1)
	}
	err = readAll(ctx, s.js, natsjs.DeadLetterStream, cfg, batch, fetchBytes, func(seq uint64, stored time.Time, subject string, _ nats.Header, data []byte) error {
		e := decode(seq, subject, stored, data)
		if !f.match(e) {
			return nil
		}
		if limit > 0 && len(out) == limit || maxBytes > 0 && len(out) > 0 && size+len(data) > maxBytes {
			more = true
			return errPageFull
		}
		size += len(data)
		out = append(out, *e)
		sizes = append(sizes, len(data))
		return nil
	})
	if errors.Is(err, errPageFull) {
		err = nil
	}
	return out, sizes, more, err
}

// maxOddSubjects bounds the subjects no build stores letters on that a
// read for a destination or a source takes one by one; past it, the read
// takes every subject.
const maxOddSubjects = 64

// subjectFilters are the subjects a read of the letters f selects takes:
// for a destination or a source, only those that can hold its letters, so
// that listing one destination's few letters does not read every other
// one's (up to maxLetterBytes each). match still decides.
//
// Every build stores a letter on a subject named from the letter itself,
// stowline.deadletter.<destination>.<source> or, before destinations,
// stowline.deadletter.<source> (the default destination's): there subject
// and content agree. A message on any other subject (published by hand)
// is selected by its content or, unreadable, listed as the default
// destination's: such subjects, found in the stream's list of subjects,
// are read whatever f names. Not read: a message published by hand on a
// subject of that shape whose content names another destination or
// source, which stowline never stores.
//
// none reports that no subject the filters take holds a letter, as the
// stream's leader counts them: the read would wait out an empty fetch.
// (The consumer's own count at its creation may come from a cluster
// follower that has not applied a letter the leader acknowledged.)
func (s *Store) subjectFilters(ctx context.Context, f Filter) (filters []string, none bool, err error) {
	every := []string{natsjs.DeadLetterSubjectPrefix + ">"}
	// A name no subject of Add's holds, or one that would be a wildcard
	// in a filter: only match can tell.
	if f.Destination == "" && f.Source == "" || f.Destination != "" && !natsjs.ValidDestination(f.Destination) ||
		f.Source != "" && !events.ValidSource(f.Source) {
		return every, false, nil
	}
	token := func(name string) string {
		if name == "" {
			return "*"
		}
		return name
	}
	filters = []string{natsjs.DeadLetterSubject(token(f.Destination), token(f.Source))}
	if f.Destination == "" || f.Destination == natsjs.DefaultDestination {
		filters = append(filters, natsjs.DeadLetterSubjectPrefix+token(f.Source)) // from before destinations
	}
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(every[0]))
	if err != nil {
		return nil, false, fmt.Errorf("read the subjects of stream %s: %w", natsjs.DeadLetterStream, err)
	}
	odd, taken := 0, false
	for subject, n := range info.State.Subjects {
		if slices.ContainsFunc(filters, func(filter string) bool { return server.SubjectMatchesFilter(subject, filter) }) {
			taken = taken || n > 0
			continue
		}
		if lettersSubject(subject) {
			continue
		}
		// A subject holding a wildcard would take others as a filter,
		// and may overlap one, which the server refuses.
		if !server.IsValidLiteralSubject(subject) || odd == maxOddSubjects {
			return every, false, nil
		}
		odd++
		taken = taken || n > 0
		filters = append(filters, subject)
	}
	return filters, !taken, nil
}

// lettersSubject reports whether some build stores letters on subject:
// stowline.deadletter.<destination>.<source>, or
// stowline.deadletter.<source> from before destinations.
func lettersSubject(subject string) bool {
	rest, ok := strings.CutPrefix(subject, natsjs.DeadLetterSubjectPrefix)
	if !ok {
		return false
	}
	destination, source, two := strings.Cut(rest, ".")
	if !two {
		return events.ValidSource(destination)
	}
	return natsjs.ValidDestination(destination) && events.ValidSource(source)
}

// countedByLeader reports whether a consumer's count at its creation
// holds every message the stream acknowledged: on a stream of one
// replica, or with the consumer on the stream's leader. A one-replica
// consumer of a clustered stream may be placed on a follower that has
// not yet applied a message the leader acknowledged, and count it out.
func countedByLeader(stream *jetstream.StreamInfo, cons *jetstream.ConsumerInfo) bool {
	if stream.Config.Replicas <= 1 {
		return true
	}
	return stream.Cluster != nil && cons.Cluster != nil && stream.Cluster.Leader != "" && cons.Cluster.Leader == stream.Cluster.Leader
}

// sinceClockMargin is how far ahead of NATS's clock a forwarder's may
// run without a Since filter missing its letters.
const sinceClockMargin = 15 * time.Minute

// readAll reads a stream from the configured start to its current end,
// batch messages a fetch (0: 256), and, with fetchBytes above 0, about
// that many bytes at most (at least a whole message); fn gets each message's
// sequence, storage time, subject, headers and data. A page of letters
// is bounded in bytes: 256 letters of up to 512 KiB a fetch held 128 MiB
// in the forwarder to keep 32 of them.
func readAll(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, batch, fetchBytes int,
	fn func(seq uint64, at time.Time, subject string, hdr nats.Header, data []byte) error) error {
	if batch <= 0 || batch > 256 {
		batch = 256
	}
	info, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	last := info.CachedInfo().State.LastSeq
	if info.CachedInfo().State.Msgs == 0 ||
		cfg.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && cfg.OptStartSeq > last {
		return nil // nothing, or nothing from there on (a page asked past the last letter)
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", stream, err)
	}
	// Done with, the consumer would stay on the server, idle, for its
	// five minutes of inactivity: one for each load of the status page.
	defer func() {
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = js.DeleteConsumer(dctx, stream, ci.Name) // else it expires
		}
	}()
	if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 && countedByLeader(info.CachedInfo(), ci) {
		// Nothing stored from the start on that the filter takes: no
		// fetch to wait out (an empty window, a status page whose newest
		// letters were replayed).
		return nil
	}
	opts := []jetstream.FetchOpt{jetstream.FetchMaxWait(time.Second)}
	if fetchBytes > 0 {
		// Bounded by both. At least the largest message the server takes
		// (with room for its subject and headers): one past the bound is
		// never delivered, and the walk would stall at it.
		most := max(fetchBytes, int(js.Conn().MaxPayload())+64<<10)
		opts = append(opts, jetstream.FetchMaxBytes(most))
	}
	fetch := func() (jetstream.MessageBatch, error) { return cons.Fetch(batch, opts...) }
	empty := 0
	for {
		msgs, err := fetch()
		if err != nil {
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		n := 0
		for msg := range msgs.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				return fmt.Errorf("read stream %s: %w", stream, err)
			}
			if err := fn(meta.Sequence.Stream, meta.Timestamp, msg.Subject(), msg.Headers(), msg.Data()); err != nil {
				return err
			}
			if meta.Sequence.Stream >= last || meta.NumPending == 0 {
				return nil
			}
		}
		if err := msgs.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		if n == 0 {
			// Nothing within the wait: the end (nothing from the start
			// time on), or a server too busy to deliver; only the
			// consumer's count of messages left tells them apart.
			ci, err := cons.Info(ctx)
			if err != nil {
				return fmt.Errorf("read stream %s: %w", stream, err)
			}
			if ci.NumPending == 0 {
				return nil
			}
			if empty++; empty == maxEmptyFetches {
				return fmt.Errorf("read stream %s: %d messages left, none delivered in %d s", stream, ci.NumPending, maxEmptyFetches)
			}
		} else {
			empty = 0
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// maxEmptyFetches bounds the empty one-second fetches readAll waits
// through while the stream still holds messages for it.
const maxEmptyFetches = 30

// Replay puts the letters f selects back into the event stream for their
// destination only, with a fresh dedupe ID, and removes each letter only
// once its event is stored. It calls done with each letter once replayed
// (with dryRun, with each letter it would replay, and does nothing else),
// oldest first, and returns how many it replayed. A dry run fails where
// the replay would: a listing that fails, a destination without a
// consumer.
//
// Letters are read a page at a time, never all at once (each may hold up
// to maxLetterBytes), and a first pass reads them all before anything is
// replayed: a listing that fails part-way, or a destination without a
// consumer, replays nothing. Letters added meanwhile (a replayed study
// that fails again) are left for another replay. Up to natsjs.PublishWindow
// letters are replayed at once; a failure stops the run, and the error
// names the oldest letter that failed.
func (s *Store) Replay(ctx context.Context, f Filter, dryRun bool, done func(*Entry)) (int, error) {
	return s.ReplayIn(ctx, f, events.PriorityLow, dryRun, done)
}

// ReplayIn is Replay into the given lane (an operator's --priority): a
// replayed stat study in the low lane waits behind the backfills and for
// the lane's FORWARD_WINDOWS.
func (s *Store) ReplayIn(ctx context.Context, f Filter, lane events.Priority, dryRun bool, done func(*Entry)) (int, error) {
	lane = lane.Lane()
	if f.Empty() {
		return 0, errors.New("replay: no filter given (use All to replay every dead letter)")
	}
	last, err := s.lastSeq(ctx)
	if err != nil {
		return 0, err
	}
	// A destination without a consumer (removed, or renamed) would get
	// the events and nobody would take them: keep its letters.
	// The replay goes to the destination's lane (low by default): its
	// consumer is the one that must exist (its routine consumer stays
	// when a removal of the destination stopped part-way, or when only
	// the low one was deleted).
	// A letter of a message kept in part (no event of stowline's), or
	// one this build cannot decode, is passed over, and named in the
	// error once the others are replayed.
	checked := map[string]bool{}
	var partial, unreadable []string
	err = s.eachLetter(ctx, f, last, func(e *Entry) error {
		if e.Class == UnreadableLetter {
			unreadable = append(unreadable, strconv.FormatUint(e.Seq, 10))
			return nil
		}
		if !replayable(e) {
			partial = append(partial, strconv.FormatUint(e.Seq, 10))
			return nil
		}
		subject := natsjs.LaneSubject(lane, DestinationOf(&e.DeadLetter), e.Event.Source)
		if checked[subject] {
			return nil
		}
		checked[subject] = true
		if err := Taken(ctx, s.js, DestinationOf(&e.DeadLetter), lane, subject); err != nil {
			return fmt.Errorf("replay: %w; its letters are kept", err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	// Up to natsjs.PublishWindow letters at a time, each queued, then
	// removed. Their events may reach the stream in another order than their
	// letters', which nothing relies on: a lane's events are sent by
	// several workers at once, and a destination's ledger keeps the
	// newest state of a study forwarded whatever the order.
	// The letters in flight are held in memory (done is given each
	// whole), up to maxLetterBytes each: past replayHeldBytes of them,
	// the next waits for those before it.
	p := inorder.New(natsjs.PublishWindow)
	held := 0
	err = s.eachSized(ctx, f, last, func(e *Entry, size int) error {
		if !replayable(e) {
			return nil
		}
		if dryRun {
			n++
			done(e)
			return nil
		}
		if held > 0 && held+size > replayHeldBytes {
			if p.Wait() != nil {
				return inorder.ErrStopped
			}
		}
		if err := context.Cause(ctx); err != nil {
			return err // cancelled: no new letter is started; those in flight end
		}
		held += size
		// Its task outlives this call: it holds a copy, not the page.
		e = new(*e)
		queued := false
		return p.Run(func() error {
			// Not cancelled with the run: a publish cut off may be stored
			// all the same, its letter kept and not reported, and a
			// replay past the dedupe window would queue it again. Each
			// is bounded by the JetStream context's time-out.
			if err := s.requeue(context.WithoutCancel(ctx), e, lane); err != nil {
				return fmt.Errorf("replay dead letter %d: %w", e.Seq, err)
			}
			queued = true
			// Its event is stored: the letter goes even when the run is
			// cancelled now, or a replay past the dedupe window would
			// queue the study again.
			if _, err := s.deleteLetter(context.WithoutCancel(ctx), e.Seq); err != nil {
				return fmt.Errorf("replayed dead letter %d but could not remove it: %w", e.Seq, err)
			}
			return nil
		}, func(err error) error {
			held -= size // ends run on this goroutine
			if queued {
				// Reported even when its letter stayed, so that the
				// operator knows its study is on its way.
				n++
				done(e)
			}
			return err
		})
	})
	if errors.Is(err, inorder.ErrStopped) {
		err = nil
	}
	err = errors.Join(p.Wait(), err)
	if err == nil {
		err = errors.Join(passedOver(partial, ErrPartialLetters), passedOver(unreadable, ErrUnreadableLetters))
	}
	return n, err
}

// passedOver is the error naming the letters a replay passed over for
// why; nil for none.
func passedOver(seqs []string, why error) error {
	if len(seqs) == 0 {
		return nil
	}
	named := strings.Join(seqs[:min(len(seqs), 20)], ", ")
	if len(seqs) > 20 {
		named += fmt.Sprintf(" and %d more", len(seqs)-20)
	}
	return fmt.Errorf("replay: %s: %w", named, why)
}

// replayable reports whether e can be replayed: it decodes, and keeps its
// event whole if it kept one as stored. Letters of the first builds that
// kept them mark a partial one by its Size alone.
func replayable(e *Entry) bool {
	return e.Class != UnreadableLetter && (e.Raw == nil || !e.Raw.Partial && e.Raw.Size <= len(e.Raw.Data))
}

// requeue stores e's event again in the event stream, in its
// destination's lane: for a letter of an event the forwarder could not
// read, the event as it was stored, its bytes and its headers but
// JetStream's own (Nats-*) and the trace context; else the letter's event.
func (s *Store) requeue(ctx context.Context, e *Entry, lane events.Priority) error {
	ev := e.Event
	subject := natsjs.LaneSubject(lane, DestinationOf(&e.DeadLetter), ev.Source)
	msgID := ReplayMsgID(e)
	if lane != events.PriorityLow {
		// Its own in another lane: a low lane's replay stored whose
		// letter stayed (its delete failed), replayed again with
		// --priority stat, was dropped as its repeat, the letter deleted
		// and the study left in the low lane.
		msgID += "/" + string(lane)
	}
	if e.Raw == nil {
		_, err := natsjs.PublishTo(ctx, s.js, subject, &ev, msgID)
		return err
	}
	msg := &nats.Msg{Subject: subject, Data: e.Raw.Data, Header: nats.Header{}}
	for k, v := range e.Raw.Header {
		// The stored trace context would make the replay a part of the
		// failed delivery's trace, days old: it starts a trace anew, as
		// a replay of a decoded event does.
		if !strings.HasPrefix(k, "Nats-") && !tracing.IsContextHeader(k) {
			msg.Header[k] = slices.Clone(v)
		}
	}
	_, err := natsjs.PublishMsgTo(ctx, s.js, msg, msgID)
	return err
}

// replayHeldBytes bounds the stored size of the letters a replay has in
// flight: 256 letters of up to maxLetterBytes were 128 MiB, in the
// forwarder whose admin API runs the replay.
const replayHeldBytes = 16 << 20

// Replay and Purge read pages of at most this many letters and bytes
// (past the first letter).
const (
	workPageLetters = 256
	workPageBytes   = 32 << 20
)

// lastSeq is the dead-letter stream's last sequence now: Replay and Purge
// stop there.
func (s *Store) lastSeq(ctx context.Context) (uint64, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", natsjs.DeadLetterStream, err)
	}
	return info.State.LastSeq, nil
}

// Each calls fn with each letter f selects (every letter if f.All),
// oldest first, up to the last one stored now, reading them a page at a
// time; it stops at fn's first error and returns it.
func (s *Store) Each(ctx context.Context, f Filter, fn func(*Entry) error) error {
	last, err := s.lastSeq(ctx)
	if err != nil {
		return err
	}
	return s.eachLetter(ctx, f, last, fn)
}

// eachLetter calls fn with each letter f selects, oldest first, up to the
// sequence last, reading them a page at a time; it stops at fn's first
// error and returns it.
func (s *Store) eachLetter(ctx context.Context, f Filter, last uint64, fn func(*Entry) error) error {
	return s.eachSized(ctx, f, last, func(e *Entry, _ int) error { return fn(e) })
}

// eachSized is eachLetter, with each letter's stored size.
func (s *Store) eachSized(ctx context.Context, f Filter, last uint64, fn func(e *Entry, size int) error) error {
	for after := uint64(0); ; {
		page, sizes, more, err := s.page(ctx, f, after, workPageLetters, workPageBytes)
		if err != nil {
			return err
		}
		for i := range page {
			if page[i].Seq > last {
				return nil
			}
			if err := fn(&page[i], sizes[i]); err != nil {
				return err
			}
			after = page[i].Seq
		}
		if !more {
			return nil
		}
	}
}

// Taken checks that a consumer of destination d takes events published
// to subject in lane: the lane's consumer, or, with forwarders from
// before lanes, its one consumer (which took every subject of the
// destination). Without one, the error wraps ErrNoConsumer: events
// published there would reach nobody.
func Taken(ctx context.Context, js jetstream.JetStream, d string, lane events.Priority, subject string) error {
	want := natsjs.LaneConsumerName(d, lane)
	names := []string{want}
	if one := natsjs.ConsumerName(d); one != want {
		names = append(names, one) // the routine lane's is that one already
	}
	var err error
	for _, name := range names {
		var c jetstream.Consumer
		if c, err = js.Consumer(ctx, natsjs.EventStream, name); err != nil {
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue
			}
			break
		}
		cfg := c.CachedInfo().Config
		for _, f := range append([]string{cfg.FilterSubject}, cfg.FilterSubjects...) {
			if f != "" && server.SubjectMatchesFilter(subject, f) {
				return nil
			}
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("read the consumers of destination %q: %w", d, err)
	}
	return fmt.Errorf("destination %q has no consumer %s on stream %s (is it in DESTINATIONS, and has its forwarder started?): %w",
		d, want, natsjs.EventStream, ErrNoConsumer)
}

// ReplayMsgID is the dedupe ID of a replayed letter's event: fresh, so
// JetStream does not drop it as a repeat of the original, and stable per
// dead letter, so replaying the same letter twice in a row queues it
// once. It names when the letter was written besides its number: a
// recreated dead-letter stream numbers from 1 again, and a letter of the
// same study state at a number replayed before within the dedupe window
// was dropped as a repeat while the letter was deleted, the study lost.
func ReplayMsgID(e *Entry) string {
	id := e.Event.MsgID() + "/replay/" + strconv.FormatUint(e.Seq, 10)
	if !e.DeadLetteredAt.IsZero() {
		id += "/" + strconv.FormatInt(e.DeadLetteredAt.UnixNano(), 36)
	}
	return id
}

// Purge deletes the letters f selects for good, calling done with each
// once deleted (with dryRun, with each it would delete, and deletes
// nothing), oldest first, and returns how many. As Replay, it reads the
// letters a page at a time, all of them before it deletes one.
func (s *Store) Purge(ctx context.Context, f Filter, dryRun bool, done func(*Entry)) (int, error) {
	if f.Empty() {
		return 0, errors.New("purge: no filter given (use All to purge every dead letter)")
	}
	last, err := s.lastSeq(ctx)
	if err != nil {
		return 0, err
	}
	if err := s.eachLetter(ctx, f, last, func(*Entry) error { return nil }); err != nil {
		return 0, err // nothing purged
	}
	n := 0
	err = s.eachLetter(ctx, f, last, func(e *Entry) error {
		if !dryRun {
			gone, err := s.deleteLetter(ctx, e.Seq)
			if err != nil {
				return fmt.Errorf("purge dead letter %d: %w", e.Seq, err)
			}
			if gone {
				// A replay or purge running at the same time took it
				// since it was read: not this purge's to count or log.
				return nil
			}
		}
		n++
		done(e)
		return nil
	})
	return n, err
}

// deleteLetter deletes the letter at seq; gone reports that it was
// deleted already, by a replay or purge running at the same time. The
// server answers the delete of a missing message with a generic failure
// ("message deletion unsuccessful: no message found", not
// ErrMsgNotFound), so such an answer is checked by reading the letter.
// Any other failure (a time-out, after which the delete may have been
// done) is returned.
func (s *Store) deleteLetter(ctx context.Context, seq uint64) (gone bool, err error) {
	err = s.stream.DeleteMsg(ctx, seq)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return true, nil
	case errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful):
		if _, gerr := s.stream.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return true, nil
		}
	}
	return false, err
}

// StreamStart is when the event stream's oldest event was stored, zero
// when it holds none: a re-forward or a backfill from the stream reaches
// back no further (EVENTS_RETENTION).
func StreamStart(ctx context.Context, js jetstream.JetStream) (time.Time, error) {
	s, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		return time.Time{}, fmt.Errorf("stream %s: %w", natsjs.EventStream, err)
	}
	if st := s.CachedInfo().State; st.Msgs > 0 {
		return st.FirstTime, nil
	}
	return time.Time{}, nil
}

// WindowNote says so when a window read from the event stream, since to
// until (zero: now), starts before the stream's oldest event: what was
// received from since until that event has expired (EVENTS_RETENTION) and
// was not queued, which a count of what was does not tell (a destination
// backfilled "since 2025-01-01" with the default --from stream got the
// last week). "" when the stream reaches back.
func WindowNote(ctx context.Context, js jetstream.JetStream, since, until time.Time) string {
	first, err := StreamStart(ctx, js)
	const instead = "`forwarder backfill --from source` reads Orthanc's studies instead"
	switch {
	case err != nil:
		return fmt.Sprintf("could not read when the event stream's oldest event was received: %v", err)
	case first.IsZero():
		return "the event stream holds no event (it keeps them EVENTS_RETENTION): " + instead
	case !first.After(since):
		return ""
	case !until.IsZero() && !until.After(first):
		// A count of 0 here says nothing of the window: read as "nothing
		// arrived then", it hides a whole lost day.
		return fmt.Sprintf("the whole window, %s to %s, precedes the event stream's oldest event, received %s (it keeps them EVENTS_RETENTION): nothing in it could be queued; %s",
			since.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339), first.UTC().Format(time.RFC3339), instead)
	}
	return fmt.Sprintf("the event stream holds the events received since %s (it keeps them EVENTS_RETENTION): any received from %s until then were not queued; %s",
		first.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339), instead)
}

// UnreadableNote says what became of the n messages a re-forward found
// in its window that are no event this build reads: not queued.
func UnreadableNote(n int) string {
	return fmt.Sprintf("%d messages in the window are no event this build reads and were not queued: the forwarders dead-letter them as undecodable (`forwarder replay list --reason undecodable`)", n)
}

// ReforwardIn re-queues every event the main stream received in
// [since, until) (until zero: up to now), for a destination that lost
// data, or one added since (a backfill): for the destination named, or
// for every destination when it is empty, in lane (an operator's
// --priority; the low lane by default). Each gets a fresh dedupe ID.
//
// unreadable counts the messages stored in the window that are no event
// this build reads (the forwarders dead-letter those as undecodable):
// not queued. Events of a newer ingest's version are not queued either,
// and fail the run once the others are (an error matching
// events.ErrNewerVersion): newer forwarders did forward them, and a
// re-forward from an older one (a rollback) would leave their studies out
// while reporting success.
func ReforwardIn(ctx context.Context, js jetstream.JetStream, destination string, lane events.Priority, since, until time.Time, dryRun bool) (evs []events.StudyStable, unreadable int, err error) {
	if since.IsZero() {
		return nil, 0, errors.New("reforward: a start time is required")
	}
	if !until.IsZero() && !until.After(since) {
		return nil, 0, errors.New("reforward: the end time must be after the start time")
	}
	if destination != "" {
		// Events queued for a destination no consumer takes in this lane
		// would reach nobody (a lane consumer deleted by hand, a removal
		// stopped part-way), while the run reported them queued.
		if err := Taken(ctx, js, destination, lane, natsjs.LaneSubject(lane, destination, "any-source")); err != nil {
			return nil, 0, fmt.Errorf("reforward: %w", err)
		}
	}
	// The window is on the time the ingest received each event (its
	// ReceivedAt; the storage time for events from before it had one):
	// a copy an earlier re-forward for every destination stored is read
	// here with its original's ReceivedAt, and one received before the
	// window must not be queued again by every later run whose window
	// covers when the copy was stored. The stream is read from a margin
	// earlier, so an ingest clock ahead of NATS's does not hide events
	// received just after the start.
	start := since.Add(-sinceClockMargin)
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: natsjs.LaneSubjectFilters(),
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	}
	// The events to queue, each held once (they were copied into a second
	// list, the window's twice over), and their stream sequences, for
	// their copies' dedupe IDs.
	var (
		found []events.StudyStable
		seqs  []uint64
	)
	// Each study state once: the stream may hold it several times, from
	// the webhook and the reconciler on different subjects, and from an
	// earlier reforward for every destination (its copies are on the
	// subjects read here, with the original's ReceivedAt), which would
	// otherwise be queued again, doubling at each run.
	seen := map[string]bool{}
	// Events of a newer ingest, counted, and the first one's error.
	var (
		newer      int
		newerFirst error
	)
	err = readAll(ctx, js, natsjs.EventStream, cfg, 0, 0, func(seq uint64, stored time.Time, _ string, _ nats.Header, data []byte) error {
		ev, err := events.Decode(data)
		if err != nil {
			// Unread, its ReceivedAt is unknown: the window is on its
			// storage time.
			if stored.Before(since) || !until.IsZero() && !stored.Before(until) {
				return nil
			}
			if errors.Is(err, events.ErrNewerVersion) {
				if newer++; newer == 1 {
					newerFirst = fmt.Errorf("event %d: %w", seq, err)
				}
				return nil
			}
			unreadable++
			return nil
		}
		received := ev.ReceivedAt
		if received.IsZero() {
			received = stored
		}
		if received.Before(since) || !until.IsZero() && !received.Before(until) || seen[ev.MsgID()] {
			return nil
		}
		seen[ev.MsgID()] = true
		found = append(found, *ev)
		seqs = append(seqs, seq)
		return nil
	})
	if err != nil && !dryRun {
		// What was read before the failure was not queued: returning it
		// would report it as queued (as Replay does).
		return nil, unreadable, err
	}
	// The events of a newer ingest are passed over, the others queued,
	// and the run fails naming them: a rollback's window would otherwise
	// stay blocked for EVENTS_RETENTION, its older studies with it.
	var newerErr error
	if newer > 0 {
		newerErr = fmt.Errorf("%d events in the window were written by a newer ingest, which this forwarder cannot read (%w): not queued; re-forward them with a forwarder of the ingest's version",
			newer, newerFirst)
	}
	if err != nil || dryRun {
		return found, unreadable, errors.Join(err, newerErr)
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	// Up to natsjs.PublishWindow at a time, in whatever order they are
	// stored (as Replay's). A failure stops the run; those queued are returned.
	queued := make([]bool, len(found))
	p := inorder.New(natsjs.PublishWindow)
	var cancelled error
	for i := range found {
		if cancelled = context.Cause(ctx); cancelled != nil {
			break
		}
		ev := &found[i]
		// Re-forwards run in the low lane by default: they never delay
		// live studies.
		subject := natsjs.LaneSubject(lane, destination, ev.Source)
		msgID := ev.MsgID() + "/reforward/" + destination + "/" + stamp + "/" + strconv.FormatUint(seqs[i], 10)
		err := p.Run(func() error {
			// Not cancelled with the run, as a backfill's: a publish cut
			// off may be stored all the same, and left out of what the
			// run reports queued, a rerun (another stamp) would queue it
			// again. Each is bounded by the JetStream context's time-out.
			_, err := natsjs.PublishTo(context.WithoutCancel(ctx), js, subject, ev, msgID)
			return err
		}, func(err error) error {
			if err != nil {
				return fmt.Errorf("reforward event %d: %w", seqs[i], err)
			}
			queued[i] = true
			return nil
		})
		if err != nil {
			break
		}
	}
	if err := errors.Join(p.Wait(), cancelled); err != nil {
		n := 0
		for i := range found {
			if queued[i] {
				found[n] = found[i]
				n++
			}
		}
		return found[:n], unreadable, errors.Join(err, newerErr)
	}
	return found, unreadable, newerErr
}

// Open returns the existing dead-letter stream without changing its
// configuration (the replay command, the status page).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	s, err := natsjs.OpenStream(ctx, js, natsjs.DeadLetterStream)
	if err != nil {
		return nil, err
	}
	return &Store{js: js, stream: s}, nil
}
