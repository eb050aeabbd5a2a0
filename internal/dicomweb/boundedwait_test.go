package dicomweb

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/orthancapi"
)

// slowOrthanc is an Orthanc that starts answering each file read or
// conversion after answerIn (a large multi-frame instance converted, a
// file fetched from object storage), with an instance of SOP Instance
// UID uid; its client allows headerTimeout (ORTHANC_RESPONSE_TIMEOUT).
// A real Orthanc cannot be made that slow on demand.
func slowOrthanc(t *testing.T, uid string, answerIn, headerTimeout time.Duration) *orthancapi.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read first: the server then sees the client go.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(answerIn):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/dicom")
		_, _ = io.WriteString(w, "UID:"+uid+"\n")
	}))
	t.Cleanup(srv.Close)
	oc, err := orthancapi.New(srv.URL, orthancapi.WithResponseHeaderTimeout(headerTimeout))
	if err != nil {
		t.Fatal(err)
	}
	return oc
}

const slowInstanceID = "11111111-22222222-33333333-44444444-55555555"

// The wait for Orthanc's answer inside a STOW-RS body or a measuring
// pass is bounded by ORTHANC_RESPONSE_TIMEOUT, not by the stall time-out:
// an operator who raised it for slow conversions must not see them given
// up at StallTimeout (5 minutes) as "its source gave no byte". Past
// ORTHANC_RESPONSE_TIMEOUT the error names it.
func TestOrthancAnswerBoundedByItsOwnTimeout(t *testing.T) {
	const stall = 300 * time.Millisecond
	tests := []struct {
		name          string
		answerIn      time.Duration // Orthanc's first byte
		headerTimeout time.Duration // ORTHANC_RESPONSE_TIMEOUT
		wantErr       string        // "": stored (or counted)
	}{
		{"answer after five stall time-outs, within ORTHANC_RESPONSE_TIMEOUT", 5 * stall, 30 * time.Second, ""},
		{"no answer within ORTHANC_RESPONSE_TIMEOUT", time.Minute, 4 * stall, "ORTHANC_RESPONSE_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run("store/"+tt.name, func(t *testing.T) {
			var release chan struct{}
			var log requestLog
			c := stallClient(t, fakeSTOWHandler(t, &log), &release, stall, time.Minute)
			oc := slowOrthanc(t, "1.2.3", tt.answerIn, tt.headerTimeout)
			part := Part{SOPInstanceUID: "1.2.3", Size: -1, Open: func(ctx context.Context) (io.ReadCloser, error) {
				return oc.OpenTranscodedInstance(ctx, slowInstanceID, "1.2.840.10008.1.2.1")
			}}
			res, err := c.Store(t.Context(), []Part{part})
			checkBoundedWaitErr(t, err, tt.wantErr)
			if tt.wantErr == "" && len(res.Stored) != 1 {
				t.Errorf("Store = %+v, want the instance stored", res)
			}
		})
		t.Run("count/"+tt.name, func(t *testing.T) {
			oc := slowOrthanc(t, "1.2.3", tt.answerIn, tt.headerTimeout)
			n, err := CountBytes(t.Context(), func(ctx context.Context) (io.ReadCloser, error) {
				rc, _, err := oc.OpenInstanceFile(ctx, slowInstanceID)
				return rc, err
			}, stall)
			checkBoundedWaitErr(t, err, tt.wantErr)
			if tt.wantErr == "" && n != int64(len("UID:1.2.3\n")) {
				t.Errorf("CountBytes = %d", n)
			}
		})
	}
}

func checkBoundedWaitErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("err = %v, want none: Orthanc answered within ORTHANC_RESPONSE_TIMEOUT", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Fatalf("err = %v, want one naming %s", err, want)
	case want != "" && (strings.Contains(err.Error(), "gave no byte") || errors.Is(err, errCountStalled)):
		t.Fatalf("err = %v, want Orthanc's time-out, not a stall", err)
	}
}

// A bounded wait that ended gives the stall watch back: a source that
// answered after one and then stopped mid-body is given up at the stall
// time-out, in a request body as in a measuring pass. A wait count that
// leaked would leave the watch off for good, every other test passing.
func TestStallWatchedAgainAfterABoundedWait(t *testing.T) {
	const stall = 300 * time.Millisecond
	// open answers after a bounded wait of three stall time-outs, then
	// sends a few bytes and nothing more until its request ends.
	open := func(ctx context.Context) (io.ReadCloser, error) {
		end := flow.BoundedWait(ctx)
		select {
		case <-time.After(3 * stall):
		case <-ctx.Done():
		}
		end()
		return io.NopCloser(io.MultiReader(strings.NewReader("DICM"), silentReader{ctx})), nil
	}
	check := func(t *testing.T, err error, took time.Duration) {
		t.Helper()
		if err == nil || took >= 15*stall {
			t.Fatalf("err = %v after %s; want the stall after the wait given up within about %s", err, took, 4*stall)
		}
	}
	t.Run("store", func(t *testing.T) {
		var release chan struct{}
		var log requestLog
		c := stallClient(t, fakeSTOWHandler(t, &log), &release, stall, time.Minute)
		ctx, cancel := context.WithTimeout(t.Context(), 15*stall) // a watch left off ends here
		defer cancel()
		start := time.Now()
		_, err := c.Store(ctx, []Part{{SOPInstanceUID: "1.2.3", Size: -1, Open: open}})
		check(t, err, time.Since(start))
		if !strings.Contains(err.Error(), "gave no byte") {
			t.Errorf("err = %v, want the source's stall", err)
		}
	})
	t.Run("count", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 15*stall)
		defer cancel()
		start := time.Now()
		_, err := CountBytes(ctx, open, stall)
		check(t, err, time.Since(start))
		if !errors.Is(err, errCountStalled) {
			t.Errorf("err = %v, want the count's stall", err)
		}
	})
}

// silentReader yields nothing until ctx ends.
type silentReader struct{ ctx context.Context }

func (r silentReader) Read([]byte) (int, error) {
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}
