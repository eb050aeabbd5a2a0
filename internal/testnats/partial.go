package testnats

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// PartialListing is the JetStream of a cluster where the leaders of the
// event stream's consumers in Hidden do not answer the servers in time
// (a node lost, an election). Its CONSUMER.LIST answer counts them in its
// total but leaves them out, so nats.go (v1.55), which pages by what it
// got, asks for the same page again until the context ends: ListConsumers
// gives the others, then waits for ctx. Their names (CONSUMER.NAMES,
// from the cluster's metadata) are all there, but for those in Unnamed
// (made since the names were read). Reading a hidden one by itself
// (CONSUMER.INFO): with Unread it gets no answer until ctx ends, with
// UnreadErr it fails with that at once; with SilentOnce only the first
// read of each gets no answer (no leader yet), with AnswerOnce only the
// first fails with that; the next ones answer. Those in
// DeletedAfterNames are deleted from the server once the first names
// were read. A real cluster does not leave a consumer out on demand:
// this wraps a real server's JetStream.
type PartialListing struct {
	jetstream.JetStream
	Hidden            map[string]bool
	Unnamed           map[string]bool
	Unread            bool
	UnreadErr         error
	SilentOnce        bool
	AnswerOnce        error
	DeletedAfterNames map[string]bool

	mu      sync.Mutex
	asked   map[string]bool
	deleted bool
}

// Stream returns the stream; the event stream lists as described above.
func (p *PartialListing) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := p.JetStream.Stream(ctx, name)
	if err != nil || name != natsjs.EventStream {
		return s, err
	}
	return &partialStream{Stream: s, p: p}, nil
}

// Consumer reads an event stream's consumer as described above.
func (p *PartialListing) Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	if stream == natsjs.EventStream {
		if err := p.read(ctx, name); err != nil {
			return nil, err
		}
	}
	return p.JetStream.Consumer(ctx, stream, name)
}

// read is what a read of consumer name answers before the server does:
// an error, or nil to ask the server.
func (p *PartialListing) read(ctx context.Context, name string) error {
	if !p.Hidden[name] {
		return nil
	}
	switch {
	case p.UnreadErr != nil:
		return p.UnreadErr
	case p.Unread:
		<-ctx.Done()
		return ctx.Err()
	}
	p.mu.Lock()
	first := !p.asked[name]
	if p.asked == nil {
		p.asked = map[string]bool{}
	}
	p.asked[name] = true
	p.mu.Unlock()
	switch {
	case !first:
		return nil
	case p.SilentOnce:
		<-ctx.Done()
		return ctx.Err()
	default:
		return p.AnswerOnce
	}
}

type partialStream struct {
	jetstream.Stream
	p *PartialListing
}

func (s *partialStream) ListConsumers(ctx context.Context) jetstream.ConsumerInfoLister {
	all := s.Stream.ListConsumers(ctx)
	l := &infoLister{infos: make(chan *jetstream.ConsumerInfo)}
	go func() {
		defer close(l.infos)
		hid := false
		for info := range all.Info() {
			if s.p.Hidden[info.Name] {
				hid = true
				continue
			}
			select {
			case l.infos <- info:
			case <-ctx.Done():
			}
		}
		l.err = all.Err()
		if hid && l.err == nil {
			// The same page asked again and again, short of the total.
			<-ctx.Done()
			l.err = ctx.Err()
		}
	}()
	return l
}

func (s *partialStream) ConsumerNames(ctx context.Context) jetstream.ConsumerNameLister {
	all := s.Stream.ConsumerNames(ctx)
	l := &nameLister{names: make(chan string)}
	go func() {
		defer close(l.names)
		for name := range all.Name() {
			if s.p.Unnamed[name] {
				continue
			}
			select {
			case l.names <- name:
			case <-ctx.Done():
			}
		}
		l.err = all.Err()
		s.p.mu.Lock()
		defer s.p.mu.Unlock()
		if !s.p.deleted {
			s.p.deleted = true
			for name := range s.p.DeletedAfterNames {
				if err := s.Stream.DeleteConsumer(ctx, name); err != nil {
					l.err = err
				}
			}
		}
	}()
	return l
}

func (s *partialStream) Consumer(ctx context.Context, name string) (jetstream.Consumer, error) {
	if err := s.p.read(ctx, name); err != nil {
		return nil, err
	}
	return s.Stream.Consumer(ctx, name)
}

// infoLister and nameLister are nats.go's listers, whose err is read once
// the channel is closed.
type infoLister struct {
	infos chan *jetstream.ConsumerInfo
	err   error
}

func (l *infoLister) Info() <-chan *jetstream.ConsumerInfo { return l.infos }
func (l *infoLister) Err() error                           { return l.err }

type nameLister struct {
	names chan string
	err   error
}

func (l *nameLister) Name() <-chan string { return l.names }
func (l *nameLister) Err() error          { return l.err }
