package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
)

// summaryHeaderName is the header in which Add stores a letter's
// Summary, so that the status page reads the newest letters' headers
// only, never their failed instances (up to maxLetterBytes a letter).
const summaryHeaderName = "Stowline-Summary"

// maxSummaryReason bounds the characters of the reason a summary holds.
const maxSummaryReason = 1000

// Summary is what the status page shows of a letter: which study, where
// it failed, why, when, after how many deliveries.
type Summary struct {
	Seq              uint64        `json:"-"`
	Destination      string        `json:"destination,omitempty"`
	Source           string        `json:"source"`
	OrthancStudyID   string        `json:"orthancStudyId"`
	StudyInstanceUID string        `json:"studyInstanceUid"`
	Class            forward.Class `json:"class"`
	Reason           string        `json:"reason"`
	Attempts         uint64        `json:"attempts"`
	DeadLetteredAt   time.Time     `json:"deadLetteredAt"`
}

// summaryOf summarizes a letter, its reason cut to maxSummaryReason.
func summaryOf(seq uint64, l *forward.DeadLetter) Summary {
	return Summary{Seq: seq, Destination: l.Destination, Source: l.Event.Source, OrthancStudyID: l.Event.OrthancStudyID,
		StudyInstanceUID: l.Event.StudyInstanceUID, Class: l.Class, Reason: ellipsis.Truncate(l.Reason, maxSummaryReason),
		Attempts: l.Attempts, DeadLetteredAt: l.DeadLetteredAt}
}

// summaryHeader is the value of summaryHeaderName for a letter: its
// summary as JSON, in ASCII (a header value holds no control character,
// and readers may refuse bytes past ASCII).
func summaryHeader(l *forward.DeadLetter) (string, error) {
	b, err := json.Marshal(summaryOf(0, l))
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	for _, r := range string(b) {
		switch {
		case r < 0x80:
			sb.WriteRune(r)
		case r > 0xFFFF:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&sb, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(&sb, `\u%04x`, r)
		}
	}
	return sb.String(), nil
}

// Newest returns the summaries of the n newest letters, newest first. It
// reads their headers only: the last 2n sequences of the stream, then,
// past a run of replayed or purged letters, the window that holds the
// rest, found from the stream's deleted sequences. A letter stored by an
// older build, without summaryHeaderName, is read whole.
func (s *Store) Newest(ctx context.Context, n int) ([]Summary, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", natsjs.DeadLetterStream, err)
	}
	st := info.State
	if st.Msgs == 0 || n <= 0 {
		return nil, nil
	}
	var out []Summary // newest first
	var whole []int   // indexes in out of the letters without a summary
	// read adds the letters stored in [start, end], newest first.
	read := func(start, end uint64) error {
		var window []Summary
		var noSummary []bool
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{natsjs.DeadLetterSubjectPrefix + ">"}, HeadersOnly: true,
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start}
		err := readAll(ctx, s.js, natsjs.DeadLetterStream, cfg, 0, 0, func(seq uint64, _ time.Time, _ string, hdr nats.Header, _ []byte) error {
			if seq > end {
				return errPageFull
			}
			sum, ok := fromHeader(seq, hdr)
			window, noSummary = append(window, sum), append(noSummary, !ok)
			if seq == end {
				return errPageFull
			}
			return nil
		})
		if err != nil && !errors.Is(err, errPageFull) {
			return err
		}
		for i := len(window) - 1; i >= 0 && len(out) < n; i-- {
			if noSummary[i] {
				whole = append(whole, len(out))
			}
			out = append(out, window[i])
		}
		return nil
	}
	start := st.FirstSeq
	if st.LastSeq-st.FirstSeq >= uint64(2*n) {
		start = st.LastSeq - uint64(2*n) + 1
	}
	if err := read(start, st.LastSeq); err != nil {
		return nil, err
	}
	if len(out) < n && start > st.FirstSeq {
		// A run of replayed or purged letters at the end: ask which
		// sequences are gone, and read the window that holds the rest.
		info, err := s.stream.Info(ctx, jetstream.WithDeletedDetails(true))
		if err != nil {
			return nil, fmt.Errorf("read stream %s: %w", natsjs.DeadLetterStream, err)
		}
		deleted := make(map[uint64]bool, len(info.State.Deleted))
		for _, d := range info.State.Deleted {
			deleted[d] = true
		}
		end, from := start-1, start-1
		for need := n - len(out); from > st.FirstSeq; from-- {
			if !deleted[from] {
				if need--; need == 0 {
					break
				}
			}
		}
		if err := read(from, end); err != nil {
			return nil, err
		}
	}
	gone := map[uint64]bool{}
	for _, i := range whole {
		e, err := s.Get(ctx, out[i].Seq)
		if errors.Is(err, ErrNotFound) {
			gone[out[i].Seq] = true // replayed since
			continue
		}
		if err != nil {
			return nil, err
		}
		out[i] = summaryOf(e.Seq, &e.DeadLetter)
	}
	return slices.DeleteFunc(out, func(s Summary) bool { return gone[s.Seq] }), nil
}

// fromHeader reads the summary in a letter's headers; false when it has
// none (stored by an older build) or one that does not decode.
func fromHeader(seq uint64, hdr nats.Header) (Summary, bool) {
	sum := Summary{Seq: seq}
	v := hdr.Get(summaryHeaderName)
	if v == "" || json.Unmarshal([]byte(v), &sum) != nil {
		return Summary{Seq: seq}, false
	}
	sum.Seq = seq
	return sum, true
}
