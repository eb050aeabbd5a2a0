package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/routing"
)

// priorityRuleTimeout bounds the reads of one study for PRIORITY_RULE, so
// that a slow source leaves the publish most of INGEST_PUBLISH_TIMEOUT.
const priorityRuleTimeout = 5 * time.Second

// prioritizer gives the events that name no priority the one
// PRIORITY_RULE picks: stat for a study the rule is true for, else
// routine. It sits in front of the publisher of the webhook and of the
// reconciler, so whichever announces a study first puts it in its lane
// (the other's copy is dropped as a duplicate: the dedupe ID does not
// depend on the lane).
type prioritizer struct {
	next    events.Publisher
	rule    routing.Route
	sources *Sources
	timeout time.Duration
	log     *slog.Logger
	events  *prometheus.CounterVec
}

// newPrioritizer wraps next; with no rule it only counts the events by
// priority.
func newPrioritizer(next events.Publisher, expr string, sources *Sources, reg prometheus.Registerer, log *slog.Logger) (*prioritizer, error) {
	rule, err := routing.CompileStudyRule(expr)
	if err != nil {
		return nil, fmt.Errorf("PRIORITY_RULE: %w", err)
	}
	p := &prioritizer{
		next: next, rule: routing.Route{Study: rule}, sources: sources, timeout: priorityRuleTimeout, log: log,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowline_ingest_priority_total",
			Help: "Events published by the webhook and the reconciler, by lane (priority: stat, routine, low) and by what chose it (by: event, rule, default; rule_error: PRIORITY_RULE failed and the study went routine).",
		}, []string{"priority", "by"}),
	}
	if err := reg.Register(p.events); err != nil {
		return nil, err
	}
	return p, nil
}

// Publish stores ev in the lane of its priority, or of the rule's.
func (p *prioritizer) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	by := "event"
	if ev.Priority == "" {
		by = "default"
		if !p.rule.Study.All() {
			stat, err := p.matches(ctx, ev)
			switch {
			case err != nil:
				// The study must not be lost over its priority.
				by = "rule_error"
				p.log.Warn("PRIORITY_RULE failed on a study; it goes in the routine lane",
					"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID, "err", err)
			case stat:
				by = "rule"
				e := *ev
				e.Priority = events.PriorityStat
				ev = &e
			default:
				by = "rule"
			}
		}
	}
	ack, err := p.next.Publish(ctx, ev)
	if err == nil {
		p.events.WithLabelValues(string(ev.Priority.Lane()), by).Inc()
	}
	return ack, err
}

// matches evaluates the rule on the study, read from its source.
func (p *prioritizer) matches(ctx context.Context, ev *events.StudyStable) (bool, error) {
	if p.sources == nil {
		return false, fmt.Errorf("no Orthanc source is configured")
	}
	o, err := p.sources.Lookup(ev.Source)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	instances, err := o.StudyInstances(ctx, ev.OrthancStudyID)
	if err != nil {
		return false, fmt.Errorf("list the study's instances: %w", err)
	}
	selected, err := p.rule.Select(ctx, o, ev.Source, ev.OrthancStudyID, instances)
	if err != nil {
		return false, err
	}
	return len(selected) > 0, nil
}
