package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/testidp"
)

// The destination as the forwarder builds it (newDestinationTransport,
// the bandwidth cap, OAuth2 tokens) keeps what the STOW client needs to
// send a request again that broke on a kept-alive connection the server
// closed as it was reused: the trace of the request's connection passes
// through every layer. Without it, the 50 s idle connections above
// Orthanc's 1 s keep-alive cost a study an attempt and a delivery.
func TestDestinationSendsAgainOnABrokenReusedConnection(t *testing.T) {
	idp := testidp.Start(t)
	stow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, `{"00081199":{"vr":"SQ","Value":[{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.7"]},"00081155":{"vr":"UI","Value":["1.1"]}}]}}`)
	}))
	t.Cleanup(stow.Close)
	// The token gate answers the requests the front does not drop.
	gate := idp.Gate(t, stow.URL)
	var answered atomic.Int32
	// The second request on a connection, once: closed unread.
	drop := &faultproxy.OnceOnConn{N: 2}
	front := faultproxy.StartConnDropper(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answered.Add(1)
		gate.ServeHTTP(w, r)
	}), drop.Drop)
	env := map[string]string{
		"NATS_URL": "nats://127.0.0.1:4222", "INGEST_TOKEN": "0123456789abcdef0123",
		"DICOMWEB_URL": front.URL + "/dicom-web", "STOW_MAX_BYTES_PER_SECOND": "100MiB",
		"OAUTH_TOKEN_URL": idp.TokenURL, "OAUTH_CLIENT_ID": idp.ClientID, "OAUTH_CLIENT_SECRET": idp.ClientSecret,
	}
	dest := loadedDestination(t, env, 0)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	d, err := newDestination(ctx, &dest, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.HTTP.CloseIdleConnections)
	part := dicomweb.Part{SOPInstanceUID: "1.1", Size: 4 << 10, Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(make([]byte, 4<<10))), nil
	}}
	for i := range 2 {
		if _, err := d.STOW.Store(t.Context(), []dicomweb.Part{part}); err != nil {
			t.Fatalf("Store %d: %v", i+1, err)
		}
	}
	if drop.Dropped() != 1 || answered.Load() != 2 || gate.Accepted() != 2 {
		t.Errorf("%d requests dropped, %d answered, %d accepted by the token gate; want 1, 2 and 2", drop.Dropped(), answered.Load(), gate.Accepted())
	}
}
