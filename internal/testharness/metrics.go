package testharness

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// HistogramTop returns the largest finite bucket bound of the histogram
// name that g gathers (its first series); a histogram not gathered fails
// the test. A value above it counts only in +Inf, where
// histogram_quantile answers that bound whatever the value.
func HistogramTop(t testing.TB, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			b := mf.GetMetric()[0].GetHistogram().GetBucket()
			if len(b) == 0 {
				t.Fatalf("%s: not a histogram with buckets", name)
			}
			return b[len(b)-1].GetUpperBound()
		}
	}
	t.Fatalf("%s not gathered", name)
	return 0
}

// Metric reads a Prometheus text page at url and sums the samples that
// match sample: a metric name, optionally with labels
// (`stowline_forwarder_studies_total{result="forwarded"}`) that a sample
// must carry among its own; its other labels (destination, source) may
// be anything. ok is false when no sample matched. A page that cannot be
// read or parsed fails the test.
func Metric(t testing.TB, url, sample string) (sum float64, ok bool) {
	t.Helper()
	name, want, err := parseSample(sample)
	if err != nil {
		t.Fatalf("Metric(%q): %v", sample, err)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("Metric: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Metric: %s answered %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		got, labels, err := parseSample(line)
		if err != nil {
			t.Fatalf("Metric: %s: %q: %v", url, line, err)
		}
		if got != name || !hasLabels(labels, want) {
			continue
		}
		fields := strings.Fields(line[sampleEnd(line):])
		if len(fields) == 0 {
			t.Fatalf("Metric: %s: %q has no value", url, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("Metric: %s: %q: %v", url, line, err)
		}
		sum, ok = sum+v, true
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("Metric: read %s: %v", url, err)
	}
	return sum, ok
}

func hasLabels(labels, want map[string]string) bool {
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// sampleEnd is the index just after a sample line's name and labels.
func sampleEnd(line string) int {
	i := strings.IndexAny(line, "{ ")
	switch {
	case i < 0:
		return len(line)
	case line[i] == ' ':
		return i
	}
	inQuote, escaped := false, false
	for j := i + 1; j < len(line); j++ {
		c := line[j]
		switch {
		case escaped:
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			inQuote = !inQuote
		case c == '}' && !inQuote:
			return j + 1
		}
	}
	return len(line)
}

// parseSample splits `name{k="v",...} value` (the value optional) into
// the name and the labels.
func parseSample(s string) (string, map[string]string, error) {
	end := sampleEnd(s)
	head := s[:end]
	name, rest, hasLabels := strings.Cut(head, "{")
	labels := map[string]string{}
	if !hasLabels {
		return strings.TrimSpace(name), labels, nil
	}
	rest, ok := strings.CutSuffix(rest, "}")
	if !ok {
		return "", nil, fmt.Errorf("unterminated labels")
	}
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok || !strings.HasPrefix(after, `"`) {
			return "", nil, fmt.Errorf("label %q: want key=\"value\"", rest)
		}
		var val strings.Builder
		i := 1
		for ; i < len(after) && after[i] != '"'; i++ {
			if after[i] == '\\' && i+1 < len(after) {
				i++
				switch after[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(after[i])
				}
				continue
			}
			val.WriteByte(after[i])
		}
		if i >= len(after) {
			return "", nil, fmt.Errorf("label %s: unterminated value", key)
		}
		labels[strings.TrimSpace(key)] = val.String()
		rest = strings.TrimPrefix(after[i+1:], ",")
	}
	return name, labels, nil
}
