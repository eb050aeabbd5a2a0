package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/orthancapi"
)

// errRenamed: Orthanc, whose name the source takes (no name configured),
// was renamed. The Lua script names its events after the new name at
// once; the reconciler's events must too, or every study is stored twice
// under two dedupe IDs and forwarded twice.
var errRenamed = errors.New("reconcile: Orthanc's Name changed")

// checkName reads Orthanc's Name, once a poll interval, for a source
// without a configured name; errRenamed when it changed. A failed read is
// left to the change log's read, which fails too.
func (s *sourceRunner) checkName(ctx context.Context) error {
	if s.configured != "" || time.Since(s.nameChecked) < s.r.opts.PollInterval {
		return nil
	}
	sys, err := s.orthanc.System(ctx)
	if err != nil {
		return nil
	}
	return s.sameName(sys, true)
}

// sameName is checkName's comparison, for an answer of GET /system. While
// leading (twice), another Name is followed at the second answer in a
// row; as a lease is taken, at the first: a replica that waited for the
// lease took the name at its own start, and polling on under it would
// queue the studies under the old name while the Lua script names them
// after the new.
func (s *sourceRunner) sameName(sys orthancapi.System, twice bool) error {
	if s.configured != "" {
		return nil
	}
	s.nameChecked = time.Now()
	name := events.DefaultSourceName(sys.Name)
	if name == s.name {
		s.renamedTo = ""
		return nil
	}
	// Followed at the second answer in a row: Orthancs of other Names
	// behind one URL (one database) would otherwise rename the source at
	// every poll, each study queued under both names.
	if twice && s.renamedTo != name {
		s.renamedTo = name
		s.log.Info("Orthanc answers another Name; the source follows it if the next check says so too", "new_source", name)
		return nil
	}
	s.log.Warn("Orthanc's Name changed: the reconciler names this source's events after the new one, as the Lua script does, and carries its cursor over",
		"new_source", name)
	return errRenamed
}

// adoptRenamed continues, for a source without a cursor under its name,
// the cursor its Orthanc's change log has under another name: an earlier
// Name of Orthanc (no name configured), or, for a configured source, the
// one name the operator gives it (Options.AdoptCursor:
// ORTHANC_SOURCE_NAME set or changed, ORTHANC_URL moved into
// ORTHANC_SOURCES). A configured
// source took any matching cursor: with two deployments on one NATS, one
// whose Orthanc was restored from the other's backup took and deleted
// the other's while its ingest was down, which then started again at the
// end of its log. Starting at the end of the change log instead
// missed every study whose webhook was lost between the last poll under
// the old name and the first under the new one, and the pending studies
// (Orthanc is restarted to be renamed, and forgets its unstable studies
// then). A cursor is this Orthanc's when the change it points at is in
// its change log: numbers, types, resources and dates together are one
// database's. The configured source's named cursor is taken too when
// that change is gone and the log goes at least that far: buffer mode
// deletes a forwarded study, and Orthanc its changes with it. Never
// another source's of this reconciler (two Orthancs fed the same studies
// in step could log the same change), nor one a live replica holds, nor,
// for a source without a configured name, a configured source's
// (cursor.Configured). sys and sysErr are loadCursor's GET /system. The
// cursor is moved to the new name's key; adopted is false when none
// matched.
func (s *sourceRunner) adoptRenamed(ctx context.Context, sys orthancapi.System, sysErr error) (adopted bool, err error) {
	// A configured source not told a name only looks, under the name an
	// unnamed source would have had: a cursor it would have taken is
	// named in a Warn, for an operator who renamed it. Only the source
	// named to adopt does: the others, whose changes at the cursor may be
	// gone too, would take it.
	lookOnly := s.configured != "" && (s.r.opts.AdoptCursor.From == "" || s.configured != s.r.opts.AdoptCursor.To)
	if lookOnly {
		// Only a hint: it never holds the start up.
		defer func() {
			if err != nil {
				s.log.Debug("could not look for a cursor under Orthanc's own Name", "err", err)
				adopted, err = false, nil
			}
		}()
	}
	kv := s.r.opts.KV
	ours := map[string]bool{}
	for _, o := range s.r.sources {
		if o.configured != "" {
			ours[cursorKey(o.configured)] = true
		}
	}
	// A configured source reads its one candidate by key: listing keys
	// needs a consumer on the bucket, which the documented ingest
	// permissions (docs/nats-permissions.md) do not allow.
	var candidates []string
	switch {
	case lookOnly:
		// The likely earlier name: the one an unnamed source had.
		if sysErr != nil {
			return false, fmt.Errorf("orthanc: read its Name: %w", sysErr)
		}
		candidates = []string{cursorKey(events.DefaultSourceName(sys.Name))}
	case s.configured != "":
		candidates = []string{cursorKey(s.r.opts.AdoptCursor.From)}
	default:
		// Listing needs a consumer on the bucket, which the documented
		// ingest permissions do not allow: refused (or not answered), the
		// source goes on with the name it followed Orthanc's from, if any,
		// rather than failing every poll of its first start.
		lister, err := kv.ListKeysFiltered(ctx, cursorKey("*"))
		if err != nil {
			s.log.Warn("cannot list the reconciler's cursors (the NATS user may not create a consumer on the stowline_reconcile bucket: docs/nats-permissions.md): "+
				"a cursor left under an earlier Name of this Orthanc is not looked for", "err", err)
			if s.renamedFrom != "" {
				candidates = append(candidates, cursorKey(s.renamedFrom))
			}
			break
		}
		for k := range lister.Keys() {
			candidates = append(candidates, k)
		}
	}
	var keys []string
	for _, k := range candidates {
		if k != s.store.key && !ours[k] {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var (
		from, held string
		found      cursor
		rev        uint64
		// why a configured source's named cursor is not taken
		why = "no cursor is stored under that name"
	)
	for _, k := range keys {
		entry, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read cursor %s: %w", k, err)
		}
		var c cursor
		if json.Unmarshal(entry.Value(), &c) != nil || c.Change == nil || c.Seq <= 0 {
			why = "the cursor stored under that name cannot be read, or points at no change"
			continue
		}
		page, err := s.orthanc.Changes(ctx, c.Seq-1, 1)
		if err != nil {
			return false, fmt.Errorf("orthanc: read change %d: %w", c.Seq, err)
		}
		at := len(page.Changes) > 0 && page.Changes[0].Seq == c.Seq
		switch {
		case at && !c.Change.matches(page.Changes[0]):
			why = fmt.Sprintf("the change at its position (%d) is another in this Orthanc's change log: another Orthanc's cursor, or this one's database was recreated", c.Seq)
			continue
		case !at && s.configured == "" && k == cursorKey(s.renamedFrom) && s.renamedRev != 0 && entry.Revision() == s.renamedRev:
			// This runner's own cursor under the name it followed
			// Orthanc's from, unwritten since (the revision it last
			// wrote or read): this Orthanc's, though its change is
			// gone (buffer mode deletes a forwarded study's changes).
			// Taken, unless a replica holds that name's lease (below).
		case !at && s.configured == "":
			if k == cursorKey(s.renamedFrom) {
				// Written since by another replica, or never seen by
				// this one: with its change gone, it cannot be told
				// from another Orthanc's, and is left.
				s.log.Warn("the cursor of the name this source had before Orthanc was renamed points at a change gone from the change log, and is not carried over: the reconciler starts at the end of the log; run `forwarder audit --enqueue` for the studies stored since the last poll under that name",
					"previous_source", s.renamedFrom, "previous_cursor_key", k, "cursor", c.Seq)
			}
			continue
		case !at && lookOnly:
			continue
		case c.Configured && s.configured == "":
			// A configured source's (another deployment's, whose
			// Orthanc this one may be restored from): an unnamed
			// source takes over only an unnamed source's cursor, or
			// one older builds wrote, unmarked. Said, as it points
			// into this log: a rename of this Orthanc loses it.
			s.log.Warn("a cursor a configured source wrote points into this Orthanc's change log and is not carried over by a source following Orthanc's Name: if it is this Orthanc's, configure the source's name (ORTHANC_SOURCE_NAME) and set RECONCILE_ADOPT_CURSOR_FROM",
				"previous_source", strings.TrimPrefix(k, cursorKey("")), "previous_cursor_key", k, "cursor", c.Seq)
			continue
		case !at:
			// The change is gone: buffer mode deletes a study once
			// forwarded, and Orthanc its changes with it, so it is more
			// often gone than not. Named by the operator, the cursor is
			// taken unless the log ends before it (a recreated database,
			// which poll would take for a reset). The page tells: a later
			// change is in it, or, empty, its Last is the highest number
			// Orthanc gave. Not GET /changes?last: that is the newest
			// change still in the log, before the cursor when buffer mode
			// deleted the last study handled and none came since.
			if len(page.Changes) == 0 && page.Last < c.Seq {
				why = fmt.Sprintf("this Orthanc's change log ends at %d, before its position (%d): another Orthanc's cursor, or this one's database was recreated", page.Last, c.Seq)
				continue
			}
		}
		// Every matching cursor is asked, not only the furthest: a free
		// stale one (left by an older build's rename) must not be taken
		// while a replica still serves this Orthanc under another name.
		live, err := s.leaseLive(ctx, strings.TrimPrefix(k, cursorKey("")))
		if err != nil {
			return false, err
		}
		if live {
			held = k
			continue
		}
		if c.Seq > found.Seq {
			from, found, rev = k, c, entry.Revision()
		}
	}
	if lookOnly {
		if from != "" {
			s.log.Warn("a cursor under another source name points into this Orthanc's change log and is not carried over: the reconciler starts at the end of the log; if this source was renamed from it, restart with RECONCILE_ADOPT_CURSOR_FROM=<this source>:<that name> (another deployment on the same NATS, whose Orthanc this one was restored from, may own it)",
				"previous_source", strings.TrimPrefix(from, cursorKey("")), "previous_cursor_key", from, "cursor", found.Seq)
		}
		return false, nil
	}
	if held != "" {
		// A replica still serves the old name (one of an older build
		// during an upgrade, or a holder that could not release its
		// lease): its cursor is taken once it stops. If it never does,
		// two deployments name this Orthanc differently, and each
		// study is queued under both names.
		return false, fmt.Errorf("this Orthanc's change log is reconciled under another source name too (%s, its lease is held): waiting for it to stop; if it does not, two deployments name this Orthanc differently: give them the same source name (ORTHANC_SOURCE_NAME or ORTHANC_SOURCES)", held)
	}
	if from == "" {
		if s.configured != "" {
			// Warn: the operator asked for it, and the studies whose
			// webhooks were lost meanwhile are never published.
			s.log.Warn("RECONCILE_ADOPT_CURSOR_FROM's cursor not carried over: the reconciler starts at the end of the change log; run `forwarder audit --enqueue` for the studies stored since the last poll under that name",
				"previous_source", s.r.opts.AdoptCursor.From, "reason", why)
		}
		return false, nil
	}
	if err := s.store.save(ctx, found); err != nil {
		return false, err
	}
	s.cur = found
	s.r.m.pending.WithLabelValues(s.name).Set(float64(len(found.Pending)))
	s.log.Warn("reconciler resumes from the cursor this Orthanc's change log had under another source name (renamed): the studies it waited for are published under the new name",
		"previous_source", strings.TrimPrefix(from, cursorKey("")), "previous_cursor_key", from, "cursor", found.Seq, "pending_studies", len(found.Pending))
	// Left there, it would be resumed, stale, should the source be named
	// so again. Deleted only at the revision read.
	if err := kv.Delete(ctx, from, jetstream.LastRevision(rev)); err != nil {
		s.log.Warn("could not delete the cursor kept under the source's earlier name; delete it by hand (nats kv del)",
			"previous_cursor_key", from, "err", err)
	}
	return true, nil
}

// leaseLive reports whether source's lease was written within two of its
// TTLs: a replica still serves that name. A clean stop deletes the lease;
// a crashed holder's counts until then. The write is timed by the NATS
// server's stamp against the server's clock, never by the value's
// RenewedAt: that is the writer's clock, another host's, and a holder
// whose clock runs behind would look dead while it polls.
func (s *sourceRunner) leaseLive(ctx context.Context, source string) (bool, error) {
	entry, err := s.r.opts.KV.Get(ctx, leaseKey(source))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease %s: %w", leaseKey(source), err)
	}
	var v leaseValue
	if json.Unmarshal(entry.Value(), &v) != nil {
		return false, nil
	}
	ttl, err := time.ParseDuration(v.TTL)
	if err != nil || ttl <= 0 {
		ttl = s.r.opts.LeaseTTL
	}
	now, err := serverNow(ctx, s.r.opts.KV)
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", leaseKey(source), err)
	}
	return now.Sub(entry.Created()) < 2*ttl, nil
}

// serverNow is the NATS server's clock, as its answer on the bucket gave
// it, read after the entry it is compared with. A server that gives none
// leaves this host's clock, compared with the server's stamp still.
func serverNow(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the bucket's status for the NATS server's clock: %w", err)
	}
	if b, ok := st.(*jetstream.KeyValueBucketStatus); ok && b.StreamInfo() != nil && !b.StreamInfo().TimeStamp.IsZero() {
		return b.StreamInfo().TimeStamp, nil
	}
	return time.Now(), nil
}
