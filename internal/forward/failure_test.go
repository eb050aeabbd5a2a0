package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"connection refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, Transient},
		{"timeout", fmt.Errorf("stow: %w", context.DeadlineExceeded), Transient},
		{"cut body", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), Transient},
		{"408", &dicomweb.HTTPError{StatusCode: 408}, Transient},
		{"429", &dicomweb.HTTPError{StatusCode: 429}, Transient},
		{"500", &dicomweb.HTTPError{StatusCode: 500}, Transient},
		{"502", &dicomweb.HTTPError{StatusCode: 502}, Transient},
		{"503", &dicomweb.HTTPError{StatusCode: 503}, Transient},
		{"504", &dicomweb.HTTPError{StatusCode: 504}, Transient},
		{"424 (Azure: its storage or key vault unreachable)", &dicomweb.HTTPError{StatusCode: 424}, Transient},
		{"400", &dicomweb.HTTPError{StatusCode: 400}, Permanent},
		{"401 after refresh", &dicomweb.HTTPError{StatusCode: 401}, Permanent},
		{"403", &dicomweb.HTTPError{StatusCode: 403}, Permanent},
		{"409", &dicomweb.HTTPError{StatusCode: 409}, Permanent},
		{"413", &dicomweb.HTTPError{StatusCode: 413}, Permanent},
		{"415", &dicomweb.HTTPError{StatusCode: 415}, Permanent},
		{"wrapped 415", fmt.Errorf("request 2: %w", &dicomweb.HTTPError{StatusCode: 415}), Permanent},
		{"redirected", fmt.Errorf("x: %w", dicomweb.ErrRedirected), Permanent},
		// 307 and 308 are not followed with a streamed body: the base
		// URL is to fix, as with a 301 followed as GET.
		{"307", &dicomweb.HTTPError{StatusCode: 307, Location: "https://dest/dicom-web/studies"}, Permanent},
		{"308", &dicomweb.HTTPError{StatusCode: 308, Location: "https://dest/dicom-web/studies"}, Permanent},
		{"token endpoint down", &auth.TokenError{StatusCode: 0, Err: errors.New("dial")}, Transient},
		{"token endpoint 503", &auth.TokenError{StatusCode: 503, Err: errors.New("x")}, Transient},
		{"credentials refused", &auth.TokenError{StatusCode: 401, Code: "invalid_client", Err: errors.New("x")}, Transient},
		{"AWS refused the clock", fmt.Errorf("stow: %w", auth.ErrClockSkew), Transient},
		{"orthanc down", &orthancapi.Error{StatusCode: 503}, Transient},
		{"orthanc 404", &orthancapi.Error{StatusCode: 404}, SourceMissing},
		{"proxy's 404 before orthanc", &orthancapi.Error{StatusCode: 404, NotFromOrthanc: "GET /system: HTTP 404"}, Transient},
		{"explicit class", &Error{Class: Partial, Err: errors.New("3 refused")}, Partial},
		{"explicit wrapped", fmt.Errorf("study: %w", Errorf(SourceMissing, "gone")), SourceMissing},
		{"unknown", errors.New("something odd"), Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %s, want %s", tt.err, got, tt.want)
			}
		})
	}
}

func TestClassifyInstance(t *testing.T) {
	tests := []struct {
		reason int
		want   Outcome
	}{
		// Out of resources, processing failure, busy (PS3.7 C.5), Azure's
		// "being created", none given.
		{0xA700, Retry}, {0xA7FF, Retry}, {0xA76F, Retry}, {0xA780, Retry}, {0x0110, Retry}, {0xB00F, Retry}, {0, Retry},
		{0x0210, Retry}, {0x0213, Retry},
		{0xB00E, Stored}, {0x0111, Stored},
		{0xA900, Reject}, {0xA901, Reject}, {0xA9FF, Reject}, {0xC000, Reject}, {0xC122, Reject}, {0xCFFF, Reject},
		{0x0122, Reject}, {0x0124, Reject},
		// PS3.7 C.4/C.5 failures of the instance as sent: invalid
		// object instance, no such SOP class, class-instance conflict,
		// missing attribute and value, invalid attribute value, no such
		// attribute, mistyped argument, and unlisted codes of the class.
		{0x0117, Reject}, {0x0118, Reject}, {0x0119, Reject}, {0x0120, Reject}, {0x0121, Reject},
		{0x0106, Reject}, {0x0105, Reject}, {0x0212, Reject}, {0x0211, Reject}, {0x01FF, Reject}, {0x02FF, Reject},
		// dcm4chee's refusals in the out-of-resources range: conflicting
		// Patient ID, Patient ID missing, a rejected object again.
		{0xA778, Reject}, {0xA777, Reject}, {0xA771, Reject}, {0xA779, Reject},
		// Vendor codes of no known class: retried, bounded by deliveries.
		{0xB123, Retry}, {0xA800, Retry}, {0xFE00, Retry},
	}
	for _, tt := range tests {
		if got := classifyInstance(tt.reason); got != tt.want {
			t.Errorf("classifyInstance(0x%04X) = %s, want %s", tt.reason, got, tt.want)
		}
	}
}

func TestDeadLetterNow(t *testing.T) {
	for _, c := range Classes {
		if got, want := c.DeadLetterNow(), c != Transient; got != want {
			t.Errorf("%s.DeadLetterNow() = %v", c, got)
		}
	}
}
