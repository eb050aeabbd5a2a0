package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpproxy"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/orthancapi"
)

// Source is one configured Orthanc and its client.
type Source struct {
	// Name is the events' source name; empty for the one Orthanc of the
	// ORTHANC_URL setup without ORTHANC_SOURCE_NAME, which serves every
	// source name.
	Name    string
	Client  *orthancapi.Client
	varName string // ORTHANC_URL or ORTHANC_<NAME>_URL, for messages
	url     string
}

// Sources are the configured Orthanc servers.
type Sources struct {
	list   []Source
	byName map[string]*orthancapi.Client
	// aliases are the configured source of each former name
	// (ORTHANC_SOURCE_ALIASES).
	aliases map[string]string
}

// newSources builds an Orthanc client per configured source.
func newSources(c *config.Orthanc) (*Sources, error) {
	s := &Sources{byName: map[string]*orthancapi.Client{}}
	tlsCfg, err := config.NewTLSConfig(config.TLSFiles{CAFile: c.CAFile}, nil)
	if err != nil {
		return nil, fmt.Errorf("ORTHANC_CA_FILE: %w", err)
	}
	for _, src := range c.SourceList() {
		var opts []orthancapi.Option
		if c.ResponseTimeout > 0 { // zero: not loaded from the environment, the client's default
			opts = append(opts, orthancapi.WithResponseHeaderTimeout(c.ResponseTimeout))
		}
		if src.MaxConnections > 0 {
			opts = append(opts, orthancapi.WithMaxRequests(src.MaxConnections))
		}
		if tlsCfg != nil {
			opts = append(opts, orthancapi.WithTLSConfig(tlsCfg.Clone()))
		}
		switch {
		case src.Username != "" && src.PasswordFile != "":
			// Read again when Orthanc refuses it: a password changed in
			// the file first needs no restart.
			opts = append(opts, orthancapi.WithBasicAuthFile(src.Username, src.PasswordFile))
		case src.Username != "":
			opts = append(opts, orthancapi.WithBasicAuth(src.Username, src.Password))
		}
		client, err := orthancapi.New(src.URL, opts...)
		if err != nil {
			return nil, fmt.Errorf("%sURL: %w", src.Var, err)
		}
		s.list = append(s.list, Source{Name: src.Name, Client: client, varName: src.Var + "URL", url: src.URL})
		s.byName[src.Name] = client
	}
	if len(s.list) == 0 {
		return nil, errors.New("no Orthanc source is configured")
	}
	// A former name reads its source's Orthanc: Lookup only, the list
	// (the reconciler's, the audit's) keeps the configured names.
	s.aliases = c.Aliases()
	for old, name := range s.aliases {
		if client, ok := s.byName[name]; ok {
			s.byName[old] = client
		}
	}
	return s, nil
}

// warnProxied logs a warning for each source whose requests go through a
// proxy of the environment. Sites set HTTP_PROXY / HTTPS_PROXY for the
// cloud destinations (Docker's proxy configuration, OpenShift's
// cluster-wide proxy), and Go's client then sends Orthanc's traffic
// (DICOM files, and with http:// its Basic-auth password in the clear)
// through that proxy too unless NO_PROXY names Orthanc's host: a site
// reaching Orthanc through a proxy on purpose is rare, but possible, so
// this is a warning, not a refusal.
func (s *Sources) warnProxied(log *slog.Logger, proxyFor func(*url.URL) (*url.URL, error)) {
	for _, src := range s.list {
		u, err := url.Parse(src.url)
		if err != nil {
			continue // newSources refused it already
		}
		proxy, err := proxyFor(u)
		if err != nil || proxy == nil {
			continue
		}
		log.Warn("requests to this Orthanc go through the proxy of the environment (HTTP_PROXY/HTTPS_PROXY); add its host to NO_PROXY unless that is meant",
			"variable", src.varName, "orthanc_host", u.Host, "proxy_host", proxy.Host)
	}
}

// environmentProxy is the proxy Go's default transport picks for a URL,
// from HTTP_PROXY, HTTPS_PROXY and NO_PROXY.
func environmentProxy(u *url.URL) (*url.URL, error) {
	return httpproxy.FromEnvironment().ProxyFunc()(u)
}

// List returns the sources in configuration order.
func (s *Sources) List() []Source { return s.list }

// Name returns the configured source a former name stands for
// (ORTHANC_SOURCE_ALIASES), any other name as it is; on nil Sources (a
// route without sources) as it is too.
func (s *Sources) Name(source string) string {
	if s == nil {
		return source
	}
	if name, ok := s.aliases[source]; ok {
		return name
	}
	return source
}

// Lookup returns the Orthanc of an event's source: the named one, or the
// one unnamed Orthanc of the ORTHANC_URL setup.
func (s *Sources) Lookup(name string) (*orthancapi.Client, error) {
	if c, ok := s.byName[name]; ok {
		return c, nil
	}
	if c, ok := s.byName[""]; ok {
		return c, nil
	}
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return nil, fmt.Errorf("%w %q: this stowline reads studies only from %s (ORTHANC_SOURCES or ORTHANC_SOURCE_NAME)",
		forward.ErrUnknownSource, name, strings.Join(names, ", "))
}

// Ready reports whether every source answers; the error names the ones
// that do not. The sources are asked at once: asked in turn, one that
// hangs used up the check's deadline, and those after it were named as
// failing too ("context deadline exceeded") while they answered.
func (s *Sources) Ready(ctx context.Context) error {
	return errors.Join(s.ready(ctx)...)
}

// AnyReady reports whether one source at least answers; the error, when
// none does, names each.
func (s *Sources) AnyReady(ctx context.Context) error {
	errs := s.ready(ctx)
	for _, err := range errs {
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("no Orthanc source answers: %w", errors.Join(errs...))
}

// ready asks every source at once; errs[i] is the i-th source's error.
func (s *Sources) ready(ctx context.Context) []error {
	errs := make([]error, len(s.list))
	var wg sync.WaitGroup
	for i, src := range s.list {
		wg.Go(func() {
			if _, err := src.Client.System(ctx); err != nil {
				label := src.Name
				if label == "" {
					label = src.varName
				}
				errs[i] = fmt.Errorf("orthanc %s: %w", label, err)
			}
		})
	}
	wg.Wait()
	return errs
}

// slotsCollector reports how each source's ORTHANC_MAX_CONNECTIONS cap is
// used, read from its client at each scrape; sources without a cap are
// left out.
type slotsCollector struct {
	sources                     *Sources
	max, inUse, waits, waitTime *prometheus.Desc
	// the same of each destination's share (Client.ShareSlots)
	share, shareInUse, shareWaits, shareWaitTime *prometheus.Desc
}

func (s *Sources) collector() prometheus.Collector {
	labels := []string{"source"}
	shareLabels := []string{"source", "destination"}
	return &slotsCollector{
		sources: s,
		max: prometheus.NewDesc("stowline_orthanc_request_slots",
			"ORTHANC_MAX_CONNECTIONS of this process for the source: the most requests it has in flight to that Orthanc at once (source is empty for the ORTHANC_URL of a setup without ORTHANC_SOURCE_NAME).", labels, nil),
		inUse: prometheus.NewDesc("stowline_orthanc_request_slots_in_use",
			"Requests of this process in flight to the source Orthanc that hold a slot of ORTHANC_MAX_CONNECTIONS (file streams hold theirs while the destination takes them).", labels, nil),
		waits: prometheus.NewDesc("stowline_orthanc_request_slot_waits_total",
			"Requests to the source Orthanc that found every slot of ORTHANC_MAX_CONNECTIONS taken and waited.", labels, nil),
		waitTime: prometheus.NewDesc("stowline_orthanc_request_slot_wait_seconds_total",
			"Time requests to the source Orthanc spent waiting for a slot of ORTHANC_MAX_CONNECTIONS: rising while Orthanc has HTTP threads to spare, the cap is set too low.", labels, nil),
		share: prometheus.NewDesc("stowline_orthanc_request_slot_share",
			"The most slots of ORTHANC_MAX_CONNECTIONS the destination's requests to the source Orthanc hold at once: the cap less one for each other destination of the process (and one for a single host's ingest), at least one.", shareLabels, nil),
		shareInUse: prometheus.NewDesc("stowline_orthanc_request_slot_share_in_use",
			"Slots of ORTHANC_MAX_CONNECTIONS the destination's requests to the source Orthanc hold now: at its share for long, the destination takes its file streams slowly or not at all.", shareLabels, nil),
		shareWaits: prometheus.NewDesc("stowline_orthanc_request_slot_share_waits_total",
			"The destination's requests to the source Orthanc that found its share of ORTHANC_MAX_CONNECTIONS full and waited.", shareLabels, nil),
		shareWaitTime: prometheus.NewDesc("stowline_orthanc_request_slot_share_wait_seconds_total",
			"Time the destination's requests to the source Orthanc spent waiting for a place in its share of ORTHANC_MAX_CONNECTIONS (not counted in stowline_orthanc_request_slot_wait_seconds_total).", shareLabels, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *slotsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.max, c.inUse, c.waits, c.waitTime, c.share, c.shareInUse, c.shareWaits, c.shareWaitTime} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *slotsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, src := range c.sources.list {
		u := src.Client.Slots()
		if u.Max == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(u.Max), src.Name)
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(u.InUse), src.Name)
		ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(u.Waits), src.Name)
		ch <- prometheus.MustNewConstMetric(c.waitTime, prometheus.CounterValue, u.Waited.Seconds(), src.Name)
		for _, sh := range u.Shares {
			ch <- prometheus.MustNewConstMetric(c.share, prometheus.GaugeValue, float64(sh.Size), src.Name, sh.Owner)
			ch <- prometheus.MustNewConstMetric(c.shareInUse, prometheus.GaugeValue, float64(sh.Held), src.Name, sh.Owner)
			ch <- prometheus.MustNewConstMetric(c.shareWaits, prometheus.CounterValue, float64(sh.Waits), src.Name, sh.Owner)
			ch <- prometheus.MustNewConstMetric(c.shareWaitTime, prometheus.CounterValue, sh.Waited.Seconds(), src.Name, sh.Owner)
		}
	}
}
