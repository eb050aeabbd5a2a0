package natsjs

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// firstProvisionTimeout bounds the first attempt of a create-or-update
// request; each retry waits twice as long, so a cluster that is merely
// slow still answers one of them.
const firstProvisionTimeout = 2 * time.Second

// provisioningJS retries the create-or-update requests for streams,
// consumers and key-value buckets that time out. Every replica of every
// service makes them at startup (Topology.EnsureEvents, EnsureConsumer,
// EnsureLedger, ...), and on a JetStream cluster nats-server (2.15)
// may never answer one that races another for the same stream: the
// stream is created, but both callers wait until their deadline, and the
// service would exit. The requests are idempotent, and repeated once the
// race is over they are answered at once (TestClusterConcurrentProvisioning
// races four replicas; cmd/forwarder's TestNATSClusterNodeLoss starts its
// three services at once).
type provisioningJS struct {
	jetstream.JetStream
	log *slog.Logger
}

// Stream and Consumer read what provisioning compares with: the same race
// leaves them unanswered.
func (p provisioningJS) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	return provision(ctx, p.log, "stream "+name, true, func(ctx context.Context) (jetstream.Stream, error) {
		return p.JetStream.Stream(ctx, name)
	})
}

func (p provisioningJS) Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	return provision(ctx, p.log, "consumer "+name, true, func(ctx context.Context) (jetstream.Consumer, error) {
		return p.JetStream.Consumer(ctx, stream, name)
	})
}

// KeyValue reads a bucket (a stream's info): the same race leaves it
// unanswered. So may the bucket's status, which provisioning compares
// with: the bucket returned retries it too.
func (p provisioningJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := provision(ctx, p.log, "key-value bucket "+bucket, true, func(ctx context.Context) (jetstream.KeyValue, error) {
		return p.JetStream.KeyValue(ctx, bucket)
	})
	if err != nil {
		return nil, err
	}
	return provisioningKV{KeyValue: kv, log: p.log}, nil
}

// provisioningKV retries a bucket's status read, as provisioningJS its
// stream reads.
type provisioningKV struct {
	jetstream.KeyValue
	log *slog.Logger
}

func (k provisioningKV) Status(ctx context.Context) (jetstream.KeyValueStatus, error) {
	return provision(ctx, k.log, "key-value bucket "+k.Bucket(), true, k.KeyValue.Status)
}

func (p provisioningJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return provision(ctx, p.log, "stream "+cfg.Name, false, func(ctx context.Context) (jetstream.Stream, error) {
		return p.JetStream.CreateOrUpdateStream(ctx, cfg)
	})
}

func (p provisioningJS) CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	return provision(ctx, p.log, "consumer "+cfg.Durable, false, func(ctx context.Context) (jetstream.Consumer, error) {
		return p.JetStream.CreateOrUpdateConsumer(ctx, stream, cfg)
	})
}

// CreateConsumer is retried as the create-or-update requests: a create
// that landed unanswered fails when sent again with another
// configuration only, and the caller then reads the consumer.
func (p provisioningJS) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	return provision(ctx, p.log, "consumer "+cfg.Durable, false, func(ctx context.Context) (jetstream.Consumer, error) {
		return p.JetStream.CreateConsumer(ctx, stream, cfg)
	})
}

// CreateKeyValue is retried as the create-or-update requests: a create that
// landed unanswered is answered the same when sent again (JetStream
// creates a stream of the same configuration once).
func (p provisioningJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return provision(ctx, p.log, "key-value bucket "+cfg.Bucket, false, func(ctx context.Context) (jetstream.KeyValue, error) {
		return p.JetStream.CreateKeyValue(ctx, cfg)
	})
}

// provision calls fn until it answers or ctx ends; an attempt that times
// out is retried after a short random pause (replicas that raced start
// apart), with twice the time. A read's retries are logged at debug
// level: readiness probes and metric scrapes read the stream all the
// time, and while NATS is down each would warn of a create-or-update.
func provision[T any](ctx context.Context, log *slog.Logger, what string, read bool, fn func(context.Context) (T, error)) (T, error) {
	timeout := firstProvisionTimeout
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		v, err := fn(actx)
		cancel()
		timedOut := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
		if err == nil || !timedOut || ctx.Err() != nil {
			return v, err
		}
		if read {
			log.Debug("JetStream did not answer a read; retrying", "what", what, "attempt", attempt, "timeout", timeout.String())
		} else {
			log.Warn("JetStream did not answer a create-or-update request; retrying", "what", what, "attempt", attempt, "timeout", timeout.String())
		}
		timeout *= 2
		pause := time.NewTimer(time.Duration(rand.Int64N(int64(250 * time.Millisecond))))
		select {
		case <-ctx.Done():
			pause.Stop()
			return v, err
		case <-pause.C:
		}
	}
}
