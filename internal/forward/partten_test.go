package forward

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// storedFileSource is an Orthanc holding one file as it came, with the
// metadata Orthanc 1.10.1 records for it.
type storedFileSource struct {
	inst    orthancapi.Instance
	file    []byte
	meta    orthancapi.InstanceMetadata
	metaErr error
	cut     error // the answer's error after file, as net/http's for a cut body
}

func (s *storedFileSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return []orthancapi.Instance{s.inst}, nil
}

func (s *storedFileSource) OpenInstanceFile(context.Context, string) (io.ReadCloser, int64, error) {
	if s.cut != nil {
		return io.NopCloser(io.MultiReader(bytes.NewReader(s.file), &cutOnce{err: s.cut})), int64(len(s.file)), nil
	}
	return io.NopCloser(bytes.NewReader(s.file)), int64(len(s.file)), nil
}

// cutOnce fails its first Read with err and says io.EOF after, as a
// net/http body cut before its Content-Length does.
type cutOnce struct {
	err  error
	said bool
}

func (c *cutOnce) Read([]byte) (int, error) {
	if c.said {
		return 0, io.EOF
	}
	c.said = true
	return 0, c.err
}

func (s *storedFileSource) InstanceMetadata(context.Context, string) (orthancapi.InstanceMetadata, error) {
	return s.meta, s.metaErr
}

func (s *storedFileSource) OpenTranscodedInstance(context.Context, string, string) (io.ReadCloser, error) {
	panic("not converted: its syntax is listed")
}

// TestPlainPartIsAPartTenFile: a file Orthanc stores without preamble
// and file meta (rtstruct-no-meta-implicit.dcm, answered back so by GET
// /instances/{id}/file) is sent as a PS3.10 file, as STOW-RS requires:
// "DICM" at byte 128, a file meta naming the transfer syntax and SOP
// class of Orthanc's metadata, the data set unchanged after it. Before,
// it was sent as stored: no "DICM" at 128. A file with its meta is sent
// byte for byte, and so is every file to a destination that signs the
// length (plainPart).
func TestPlainPartIsAPartTenFile(t *testing.T) {
	dir := testharness.SamplesDir(t)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	bare := read("rtstruct-no-meta-implicit.dcm")
	ct := read("ct-explicit-le.dcm")
	const (
		rtstruct = "1.2.840.10008.5.1.4.1.1.481.3"
		ctImage  = "1.2.840.10008.5.1.4.1.1.2"
	)
	tests := []struct {
		name     string
		file     []byte
		sopClass string
		syntax   string // Orthanc's metadata
		list     []string
		exact    bool
		// asStored: sent byte for byte; preambleOnly: after a preamble
		// and "DICM"
		asStored, preambleOnly bool
		dataSet                []byte // what follows the file meta; nil: file's, as ReadInfo finds it
	}{
		{name: "no meta, no list", file: bare, sopClass: rtstruct, syntax: tsImplicit},
		// Sized before the request, sent as stored (plainPart).
		{name: "no meta, no list, exact length", file: bare, sopClass: rtstruct, syntax: tsImplicit, exact: true, asStored: true},
		{name: "no meta, syntax listed", file: bare, sopClass: rtstruct, syntax: tsImplicit, list: []string{tsImplicit}},
		{name: "no meta, syntax listed, exact length", file: bare, sopClass: rtstruct, syntax: tsImplicit, list: []string{tsImplicit}, exact: true, asStored: true},
		{name: "meta", file: ct, sopClass: ctImage, syntax: tsExplicit, asStored: true},
		{name: "meta, exact length", file: ct, sopClass: ctImage, syntax: tsExplicit, exact: true, asStored: true},
		{name: "meta without preamble", file: ct[dicmOffset+4:], sopClass: ctImage, syntax: tsExplicit, preambleOnly: true},
		{name: "preamble and DICM without meta", file: append(append(make([]byte, dicmOffset), "DICM"...), bare...), dataSet: bare, sopClass: rtstruct, syntax: tsImplicit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataSet := tt.dataSet
			if dataSet == nil {
				dataSet = tt.file
			}
			stored, err := testharness.ReadInfo(bufio.NewReader(bytes.NewReader(dataSet)))
			if err != nil {
				t.Fatal(err)
			}
			dataSet = dataSet[stored.DatasetOffset:]
			src := &storedFileSource{
				inst: orthancapi.Instance{ID: "2c10196c-9ff8df3f-9513776e-258e8f85-ed1fd3ba", SOPInstanceUID: stored.SOPInstanceUID, FileSize: int64(len(tt.file))},
				file: tt.file,
				meta: orthancapi.InstanceMetadata{SOPClassUID: tt.sopClass, TransferSyntaxUID: tt.syntax},
			}
			_, sent := sendPlain(t, plainForwarder(t, src, tt.exact, tt.list...), src, []orthancapi.Instance{src.inst})
			if tt.asStored {
				if !bytes.Equal(sent, tt.file) {
					t.Errorf("sent %d bytes, not the %d stored", len(sent), len(tt.file))
				}
				return
			}
			if tt.preambleOnly {
				if want := append(append(make([]byte, dicmOffset), "DICM"...), tt.file...); !bytes.Equal(sent, want) {
					t.Errorf("sent %d bytes, not a preamble, DICM and the %d stored", len(sent), len(tt.file))
				}
				return
			}
			checkPartTen(t, sent, dataSet, tt.syntax, tt.sopClass, stored.SOPInstanceUID)
		})
	}
}

// TestPlainPartFromOrthanc: the file meta put in front of a file Orthanc
// stores without one names what Orthanc itself read the file in.
func TestPlainPartFromOrthanc(t *testing.T) {
	path := filepath.Join(testharness.SamplesDir(t), "rtstruct-no-meta-implicit.dcm")
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "no-meta-src"})
	if res := o.Upload(t, path); len(res.Stored) != 1 {
		t.Fatalf("Orthanc did not store the file: %v", res.Failed)
	}
	var studies []string
	o.GetJSON(t, "/studies", &studies)
	// One request at a time: the metadata read, made while the file
	// streams, must not wait for the stream's own slot.
	client, err := orthancapi.New(o.URL, orthancapi.WithMaxRequests(1))
	if err != nil {
		t.Fatal(err)
	}
	instances, err := client.StudyInstances(t.Context(), studies[0])
	if err != nil || len(instances) != 1 {
		t.Fatalf("StudyInstances: %v, %v", instances, err)
	}
	_, sent := sendPlain(t, plainForwarder(t, client, false), client, instances)
	checkPartTen(t, sent, file, tsImplicit, "1.2.840.10008.5.1.4.1.1.481.3", instances[0].SOPInstanceUID)
}

// sendPlain plans the one instance of instances for f and returns its
// part and the bytes it sends.
func sendPlain(t *testing.T, f *Forwarder, src Source, instances []orthancapi.Instance) (dicomweb.Part, []byte) {
	t.Helper()
	_, parts, refused, err := f.planSyntaxes(t.Context(), src, instances)
	if err != nil || len(refused) != 0 || len(parts) != 1 {
		t.Fatalf("planSyntaxes: %d parts, refused %v, %v; want one part", len(parts), refused, err)
	}
	read := func(wrap func(io.Reader) io.Reader) []byte {
		rc, err := parts[0].Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		sent, err := io.ReadAll(wrap(rc))
		_ = rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		return sent
	}
	sent := read(func(r io.Reader) io.Reader { return r })
	// Read a byte at a time, the first Read's buffer holds less than the
	// file's first bytes, which it must look at.
	if bytewise := read(iotest.OneByteReader); !bytes.Equal(bytewise, sent) {
		t.Errorf("read a byte at a time: %d bytes, not the %d read whole", len(bytewise), len(sent))
	}
	return parts[0], sent
}

// checkPartTen checks that sent is a PS3.10 file of dataSet with a file
// meta naming syntax, sopClass and uid.
func checkPartTen(t *testing.T, sent, dataSet []byte, syntax, sopClass, uid string) {
	t.Helper()
	if len(sent) < dicmOffset+4 || string(sent[dicmOffset:dicmOffset+4]) != "DICM" {
		t.Fatalf("sent no DICM at byte %d: not a PS3.10 file (starts % x)", dicmOffset, sent[:min(len(sent), 16)])
	}
	info, err := testharness.ReadInfo(bufio.NewReader(bytes.NewReader(sent)))
	if err != nil {
		t.Fatal(err)
	}
	if !info.HasMeta || info.TransferSyntaxUID != syntax || info.MediaStorageSOPClassUID != sopClass || info.MediaStorageSOPInstanceUID != uid {
		t.Errorf("file meta: has %v, syntax %q, SOP class %q, instance %q; want %q, %q, %q",
			info.HasMeta, info.TransferSyntaxUID, info.MediaStorageSOPClassUID, info.MediaStorageSOPInstanceUID, syntax, sopClass, uid)
	}
	if !bytes.Equal(sent[info.DatasetOffset:], dataSet) {
		t.Errorf("the data set after the file meta differs from the stored one")
	}
}

// TestPlainPartUnreadMetadata: Orthanc answering the metadata read of a
// file without file meta with its own 500 fails that instance alone
// (unreadError: read again in the next round), and the attempt goes on.
func TestPlainPartUnreadMetadata(t *testing.T) {
	bare, err := os.ReadFile(filepath.Join(testharness.SamplesDir(t), "rtstruct-no-meta-implicit.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	src := &storedFileSource{
		inst:    orthancapi.Instance{ID: "2c10196c-9ff8df3f-9513776e-258e8f85-ed1fd3ba", SOPInstanceUID: "1.2.826.0.1.3680043.8.498.2010020400001", FileSize: int64(len(bare))},
		file:    bare,
		metaErr: &orthancapi.Error{Method: "GET", Path: "/instances/x/metadata", StatusCode: 500, OrthancMessage: "Database plugin error"},
	}
	f := plainForwarder(t, src, false)
	_, parts, refused, err := f.planSyntaxes(t.Context(), src, []orthancapi.Instance{src.inst})
	if err != nil || len(refused) != 0 || len(parts) != 1 {
		t.Fatalf("planSyntaxes: %v, refused %v, %v; want one part", parts, refused, err)
	}
	rc, err := parts[0].Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	_ = rc.Close()
	if ue := (*unreadError)(nil); !errors.As(err, &ue) || ue.SOPInstanceUID != src.inst.SOPInstanceUID {
		t.Errorf("read: %v, want the instance's unreadError", err)
	}
}

// TestPlainPartCutOrEmpty: an answer cut in its first bytes (net/http
// says io.ErrUnexpectedEOF, as io.ReadAtLeast does for a short file) is
// the source's failure, read again, not a short file to send: before, it
// went whole behind a file meta, and the destination's refusal failed
// the instance for good. An empty stored file is refused, not sent as a
// file meta alone.
func TestPlainPartCutOrEmpty(t *testing.T) {
	bare, err := os.ReadFile(filepath.Join(testharness.SamplesDir(t), "rtstruct-no-meta-implicit.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		file      []byte
		cut       error
		permanent bool // else the cut's error, not permanent
	}{
		{name: "cut in the first bytes", file: bare[:50], cut: io.ErrUnexpectedEOF},
		{name: "cut before any byte", file: nil, cut: io.ErrUnexpectedEOF},
		{name: "empty", file: nil, permanent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &storedFileSource{
				inst: orthancapi.Instance{ID: "2c10196c-9ff8df3f-9513776e-258e8f85-ed1fd3ba", SOPInstanceUID: "1.2.826.0.1.3680043.8.498.2010020400001", FileSize: int64(len(bare))},
				file: tt.file, cut: tt.cut,
				meta: orthancapi.InstanceMetadata{SOPClassUID: "1.2.840.10008.5.1.4.1.1.481.3", TransferSyntaxUID: tsImplicit},
			}
			_, parts, refused, err := plainForwarder(t, src, false).planSyntaxes(t.Context(), src, []orthancapi.Instance{src.inst})
			if err != nil || len(refused) != 0 || len(parts) != 1 {
				t.Fatalf("planSyntaxes: %v, refused %v, %v; want one part", parts, refused, err)
			}
			rc, err := parts[0].Open(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			sent, err := io.ReadAll(rc)
			_ = rc.Close()
			var fe *Error
			var ce *conversionError
			switch {
			case tt.permanent:
				if !errors.As(err, &fe) || fe.Class != Permanent || !errors.As(err, &ce) || ce.SOPInstanceUID != src.inst.SOPInstanceUID {
					t.Errorf("read %d bytes: %v; want the instance refused for good", len(sent), err)
				}
			case !errors.Is(err, tt.cut) || errors.As(err, &fe) && fe.Class == Permanent:
				t.Errorf("read %d bytes: %v; want the cut, to read again", len(sent), err)
			}
			if len(sent) != 0 {
				t.Errorf("sent %d bytes of a file that is not whole", len(sent))
			}
		})
	}
}

func plainForwarder(t *testing.T, src Source, exact bool, list ...string) *Forwarder {
	t.Helper()
	srv := httptest.NewServer(&syntaxSink{stored: map[string]string{}})
	t.Cleanup(srv.Close)
	client, err := dicomweb.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Options{
		DestinationName: "aws", SourceFor: func(string) (Source, error) { return src, nil }, Destination: client,
		Concurrency: 1, MaxInstances: 4, MaxBytes: 1 << 20, AckWait: 3 * time.Second,
		RetryDelay: time.Second, RetryMaxDelay: time.Second,
		TransferSyntaxes: list, ExactLength: exact,
		Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}
