package testharness

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Metric scrapes a Prometheus /metrics endpoint and sums the samples of
// sample's metric whose labels include sample's labels, as a PromQL
// selector would: `stowline_forwarder_studies_total{result="forwarded"}`
// counts every destination's. ok is false when no sample matched.
func Metric(t testing.TB, url, sample string) (sum float64, ok bool) {
	t.Helper()
	name, want := parseSample(sample)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		n, labels := parseSample(series)
		if n != name || !containsAll(labels, want) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", url, line, err)
		}
		sum, ok = sum+v, true
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return sum, ok
}

// parseSample splits `name{a="x",b="y"}` into the name and its labels.
func parseSample(s string) (string, []string) {
	name, rest, found := strings.Cut(s, "{")
	if !found {
		return s, nil
	}
	rest = strings.TrimSuffix(rest, "}")
	var labels []string
	for rest != "" {
		// Values are quoted and may hold commas: split after a closing quote.
		i := strings.Index(rest, `",`)
		if i < 0 {
			labels = append(labels, rest)
			break
		}
		labels = append(labels, rest[:i+1])
		rest = rest[i+2:]
	}
	return name, labels
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}
