package testnats

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// PartialListing is the JetStream of a cluster where the leaders of the
// event stream's consumers in Hidden do not answer the servers in time
// (a node lost, an election). Its CONSUMER.LIST answer counts them in its
// total but leaves them out, so nats.go (v1.55), which pages by what it
// got, asks for the same page again until the context ends: ListConsumers
// gives the others, then waits for ctx. Their names (CONSUMER.NAMES,
// from the cluster's metadata) are all there. With Unread, reading one of
// them by itself (CONSUMER.INFO) gets no answer until ctx ends either.
// A real cluster does not leave a consumer out on demand: this wraps a
// real server's JetStream.
type PartialListing struct {
	jetstream.JetStream
	Hidden map[string]bool
	Unread bool
}

// Stream returns the stream; the event stream lists as described above.
func (p *PartialListing) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := p.JetStream.Stream(ctx, name)
	if err != nil || name != natsjs.EventStream {
		return s, err
	}
	return &partialStream{Stream: s, p: p}, nil
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

func (s *partialStream) Consumer(ctx context.Context, name string) (jetstream.Consumer, error) {
	if s.p.Unread && s.p.Hidden[name] {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Stream.Consumer(ctx, name)
}

// infoLister is a ConsumerInfoLister whose err is read once infos is
// closed, as nats.go's.
type infoLister struct {
	infos chan *jetstream.ConsumerInfo
	err   error
}

func (l *infoLister) Info() <-chan *jetstream.ConsumerInfo { return l.infos }
func (l *infoLister) Err() error                           { return l.err }
