package dicomweb

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestMaybeStored: a request whose body went and whose answer could not
// be read may have been stored (a proxy's 504 while the server went on
// storing, a 2xx cut off or too large); one refused or never sent was
// not.
func TestMaybeStored(t *testing.T) {
	stow := `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]}}`
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter)
		opts   []Option
		want   bool
	}{
		{"gateway 504 page", func(w http.ResponseWriter) {
			http.Error(w, "<html>504 Gateway Time-out</html>", http.StatusGatewayTimeout)
		}, nil, true},
		{"bad gateway, empty", func(w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) }, nil, true},
		{"408 page", func(w http.ResponseWriter) { http.Error(w, "timeout", http.StatusRequestTimeout) }, nil, true},
		{"200 cut off", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"00081199":`)
		}, nil, true},
		{"200 too large", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			_, _ = io.WriteString(w, stow+strings.Repeat(" ", 4096))
		}, []Option{withMaxResponseBytes(1024)}, true},
		{"500 with a STOW body naming the instance", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, stow)
		}, nil, false},
		{"400 page", func(w http.ResponseWriter) { http.Error(w, "bad", http.StatusBadRequest) }, nil, false},
		{"429", func(w http.ResponseWriter) { http.Error(w, "slow down", http.StatusTooManyRequests) }, nil, false},
		{"501", func(w http.ResponseWriter) { http.Error(w, "no PUT", http.StatusNotImplemented) }, nil, false},
		{"503 page", func(w http.ResponseWriter) { http.Error(w, "busy", http.StatusServiceUnavailable) }, nil, false},
		{"500 page", func(w http.ResponseWriter) { http.Error(w, "oops", http.StatusInternalServerError) }, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				tt.answer(w)
			}))
			t.Cleanup(srv.Close)
			c, err := New(srv.URL, nil, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Store(t.Context(), []Part{memPart("1.2.3", []byte("x"))})
			if err == nil {
				t.Fatal("stored, want an error")
			}
			if got := MaybeStored(err); got != tt.want {
				t.Errorf("MaybeStored(%v) = %v, want %v", err, got, tt.want)
			}
		})
	}
	t.Run("not connected", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		c, err := New(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Store(t.Context(), []Part{memPart("1.2.3", []byte("x"))})
		if err == nil || MaybeStored(err) {
			t.Errorf("err %v: want an error, not MaybeStored: nothing was sent", err)
		}
	})
}
