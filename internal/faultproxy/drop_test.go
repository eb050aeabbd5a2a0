package faultproxy_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/faultproxy"
)

// part10 is the start of a DICOM file whose meta group names uid.
func part10(uid string) []byte {
	if len(uid)%2 == 1 {
		uid += "\x00"
	}
	b := append(make([]byte, 128), "DICM"...)
	b = binary.LittleEndian.AppendUint16(b, 0x0002)
	b = binary.LittleEndian.AppendUint16(b, 0x0003)
	b = append(b, "UI"...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(uid)))
	return append(append(b, uid...), "rest of the file"...)
}

// DropNext loses the first part of the next STOW request of two or more
// parts: the destination gets the others, and the answer lists the lost
// one as stored all the same. The next request passes whole.
func TestDropNext(t *testing.T) {
	var got [][]string // SOP Instance UIDs the upstream received, per request
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		mr := multipart.NewReader(r.Body, params["boundary"])
		var uids, items []string
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(p)
			uid := strings.TrimRight(string(b[140:148]), "\x00")
			uids = append(uids, uid)
			items = append(items, `{"00081155":{"vr":"UI","Value":["`+uid+`"]}}`)
		}
		got = append(got, uids)
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
	}))
	t.Cleanup(upstream.Close)
	p := faultproxy.Start(t, upstream.URL)
	p.DropNext()
	stow := func(uids ...string) []string {
		t.Helper()
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for _, u := range uids {
			w, _ := mw.CreatePart(map[string][]string{"Content-Type": {"application/dicom"}})
			w.Write(part10(u))
		}
		mw.Close()
		resp, err := http.Post(p.URL+"/dicom-web/studies", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary(), &body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ans map[string]struct {
			Value []map[string]struct{ Value []string }
		}
		if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("answer %d: %v", resp.StatusCode, err)
		}
		var stored []string
		for _, it := range ans["00081199"].Value {
			stored = append(stored, it["00081155"].Value[0])
		}
		return stored
	}
	if s := stow("1.2.3.4"); len(s) != 1 {
		t.Errorf("a request of one part: stored %q", s)
	}
	if s := stow("1.2.3.5", "1.2.3.6"); len(s) != 2 {
		t.Errorf("the answer lists %q as stored, want both", s)
	}
	if s := stow("1.2.3.7", "1.2.3.8"); len(s) != 2 {
		t.Errorf("the answer after the drop lists %q, want both", s)
	}
	want := "[[1.2.3.4] [1.2.3.6] [1.2.3.7 1.2.3.8]]"
	if fmt.Sprint(got) != want {
		t.Errorf("upstream received %v, want %s", got, want)
	}
	if d := p.Dropped(); len(d) != 1 || d[0] != "1.2.3.5" {
		t.Errorf("Dropped() = %q, want [1.2.3.5]", d)
	}
}
