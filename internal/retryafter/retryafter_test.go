package retryafter

import (
	"net/http"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-5", 0},
		{"120", 2 * time.Minute},
		{" 3 ", 3 * time.Second},
		{"99999999999", 24 * time.Hour},
		{"99999999999999999999", 24 * time.Hour},
		{"-99999999999999999999", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := parse(tt.in, now); got != tt.want {
			t.Errorf("parse(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestFromHeader(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	server := now.Add(-10 * time.Minute) // this clock is 10 min ahead
	tests := []struct {
		name string
		h    http.Header
		want time.Duration
	}{
		{"seconds", http.Header{"Retry-After": {"30"}, "Date": {server.Format(http.TimeFormat)}}, 30 * time.Second},
		{"date on the server's clock", http.Header{"Retry-After": {server.Add(30 * time.Second).Format(http.TimeFormat)}, "Date": {server.Format(http.TimeFormat)}}, 30 * time.Second},
		{"date without Date", http.Header{"Retry-After": {now.Add(30 * time.Second).Format(http.TimeFormat)}}, 30 * time.Second},
		{"date with an unreadable Date", http.Header{"Retry-After": {now.Add(30 * time.Second).Format(http.TimeFormat)}, "Date": {"yesterday"}}, 30 * time.Second},
		{"none", http.Header{"Date": {server.Format(http.TimeFormat)}}, 0},
	}
	for _, tt := range tests {
		if got := FromHeader(tt.h, now); got != tt.want {
			t.Errorf("%s: FromHeader = %v, want %v", tt.name, got, tt.want)
		}
	}
}
