package testharness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// storeSCUTimeout bounds one StoreSCU call from a test.
const storeSCUTimeout = 10 * time.Minute

// maxContexts is how many presentation contexts one association proposes.
// DICOM allows 128 (odd IDs 1..255); stay below to leave room.
const maxContexts = 120

// storeSCUAET is the calling AE title.
const storeSCUAET = "STOWLINE-SCU"

// StoreSCU sends files (directories are scanned recursively) to Orthanc's
// DICOM port with dcmtk's storescu and reports which were stored. Files
// that storescu cannot read or that Orthanc refuses are reported in
// Failed; they do not stop the others. The test fails only if storescu
// cannot run or cannot associate at all.
func (o *Orthanc) StoreSCU(t testing.TB, files ...string) StoreResult {
	t.Helper()
	bin := RequireBinary(t, "storescu")
	ctx, cancel := context.WithTimeout(context.Background(), storeSCUTimeout)
	defer cancel()
	res, err := o.storeFiles(ctx, bin, files)
	if err != nil {
		t.Fatalf("storescu to orthanc %q: %v", o.Name, err)
	}
	return res
}

// StoreFiles is StoreSCU for programs that are not tests.
func (o *Orthanc) StoreFiles(ctx context.Context, files ...string) (StoreResult, error) {
	bin, err := FindBinary("storescu")
	if err != nil {
		return StoreResult{}, err
	}
	return o.storeFiles(ctx, bin, files)
}

// A batch is one storescu run: one association whose presentation
// contexts are exactly the (SOP class, transfer syntax) pairs of its
// files.
type batch struct {
	pairs []pcPair
	seen  map[pcPair]bool
	files []string
}

type pcPair struct{ sopClass, transferSyntax string }

type fileEntry struct {
	path string
	info FileInfo
	err  error // from ReadFileInfo
}

// planBatches groups files into associations of at most maxPCs
// presentation contexts, keeping input order.
//
// Each file's own transfer syntax is proposed, one presentation context
// per (SOP class, transfer syntax). storescu's default proposals are
// uncompressed only (compressed files then fail) and let it convert
// Implicit or Big Endian files to Explicit Little Endian; -R does not add
// the file's syntax either. With exact contexts nothing is converted.
//
// Files the harness cannot read still go to storescu (in the first
// batch), which reports them and goes on, as it would for a modality;
// they are returned in unreadable only when no batch exists.
func planBatches(entries []fileEntry, maxPCs int) ([]*batch, map[string]error) {
	var batches []*batch
	unreadable := map[string]error{}
	var unreadableOrder []string
	for _, e := range entries {
		if e.err != nil {
			unreadable[e.path] = e.err
			unreadableOrder = append(unreadableOrder, e.path)
			continue
		}
		// storescu negotiates with the meta SOP class but sends with the
		// data set's: propose both when they differ.
		ps := []pcPair{{e.info.SOPClassUID, e.info.TransferSyntaxUID}}
		if c := e.info.MediaStorageSOPClassUID; c != "" && c != e.info.SOPClassUID {
			ps = append(ps, pcPair{c, e.info.TransferSyntaxUID})
		}
		var b *batch
		if n := len(batches); n > 0 && len(batches[n-1].pairs)+batches[n-1].missing(ps) <= maxPCs {
			b = batches[n-1]
		} else {
			b = &batch{seen: map[pcPair]bool{}}
			batches = append(batches, b)
		}
		for _, p := range ps {
			if !b.seen[p] {
				b.seen[p] = true
				b.pairs = append(b.pairs, p)
			}
		}
		b.files = append(b.files, e.path)
	}
	if len(batches) == 0 {
		return nil, unreadable
	}
	batches[0].files = append(batches[0].files, unreadableOrder...)
	return batches, nil
}

// missing counts the pairs b does not propose yet.
func (b *batch) missing(ps []pcPair) int {
	n := 0
	for _, p := range ps {
		if !b.seen[p] {
			n++
		}
	}
	return n
}

func (o *Orthanc) storeFiles(ctx context.Context, bin string, args []string) (StoreResult, error) {
	files, err := expandFiles(args)
	if err != nil {
		return StoreResult{}, err
	}
	res := StoreResult{Failed: map[string]string{}}
	if len(files) == 0 {
		return res, nil
	}

	entries := make([]fileEntry, len(files))
	for i, f := range files {
		info, err := ReadFileInfo(f)
		entries[i] = fileEntry{path: f, info: info, err: err}
	}
	batches, unreadable := planBatches(entries, maxContexts)
	if len(batches) == 0 {
		// Nothing storescu could negotiate for: all files are unreadable.
		for f, err := range unreadable {
			res.Failed[f] = fmt.Sprintf("not sent: %v", err)
		}
		return res, nil
	}

	tmp, err := os.MkdirTemp("", "storescu-")
	if err != nil {
		return StoreResult{}, err
	}
	defer os.RemoveAll(tmp)

	var out strings.Builder
	for i, b := range batches {
		cfg := filepath.Join(tmp, fmt.Sprintf("batch%d.cfg", i))
		if err := os.WriteFile(cfg, associationConfig(b.pairs), 0o600); err != nil {
			return StoreResult{}, err
		}
		stdout, runErr := o.runStoreSCU(ctx, bin, cfg, b.files)
		out.Write(stdout)
		outcome := parseStoreSCU(stdout)
		attempted := 0
		for _, f := range b.files {
			r, ok := outcome[f]
			if ok {
				attempted++
			}
			switch {
			case ok && r == "":
				res.Stored = append(res.Stored, f)
			case ok:
				res.Failed[f] = r
			default:
				res.Failed[f] = fmt.Sprintf("not sent by storescu (%v)", runErr)
			}
		}
		if runErr != nil && attempted == 0 {
			return StoreResult{}, fmt.Errorf("%w\n%s", runErr, tailLines(string(stdout), 20))
		}
	}
	res.Output = out.String()
	// Keep input order in Stored.
	order := make(map[string]int, len(files))
	for i, f := range files {
		order[f] = i
	}
	slices.SortStableFunc(res.Stored, func(a, b string) int { return order[a] - order[b] })
	return res, nil
}

func (o *Orthanc) runStoreSCU(ctx context.Context, bin, cfg string, files []string) ([]byte, error) {
	args := []string{
		"-v",                             // one "Sending file" line per file, parsed below
		"--no-halt",                      // go on after a bad file or a refused store
		"--read-file",                    // files with or without file meta information
		"--config-file", cfg, "STOWLINE", // exact presentation contexts
		"--aetitle", storeSCUAET,
		"--call", o.AET,
		"--timeout", "10", // connect
		"--acse-timeout", "30",
		"127.0.0.1", strconv.Itoa(o.DicomPort),
	}
	args = append(args, files...)
	cmd := exec.CommandContext(ctx, bin, args...)
	// DCMTK disables Nagle's algorithm only when TCP_NODELAY is set;
	// without it each C-STORE waits for a delayed ACK (~40 ms).
	cmd.Env = append(os.Environ(), "TCP_NODELAY=1")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("storescu: %w", err)
	}
	return buf.Bytes(), err
}

// associationConfig writes a dcmtk association negotiation profile
// (storescu --config-file) with one presentation context per pair.
func associationConfig(pairs []pcPair) []byte {
	var b bytes.Buffer
	tsIndex := map[string]int{}
	b.WriteString("[[TransferSyntaxes]]\n")
	for _, p := range pairs {
		if _, ok := tsIndex[p.transferSyntax]; ok {
			continue
		}
		tsIndex[p.transferSyntax] = len(tsIndex) + 1
		fmt.Fprintf(&b, "[TS%d]\nTransferSyntax1 = %s\n", len(tsIndex), p.transferSyntax)
	}
	b.WriteString("[[PresentationContexts]]\n[Contexts]\n")
	for i, p := range pairs {
		fmt.Fprintf(&b, "PresentationContext%d = %s\\TS%d\n", i+1, p.sopClass, tsIndex[p.transferSyntax])
	}
	b.WriteString("[[Profiles]]\n[STOWLINE]\nPresentationContexts = Contexts\n")
	return b.Bytes()
}

// parseStoreSCU reads storescu -v output and returns, for each file it
// tried, "" if stored or else the reason.
func parseStoreSCU(out []byte) map[string]string {
	res := map[string]string{}
	var cur string
	var firstErr string
	var responded bool
	flush := func() {
		if cur == "" {
			return
		}
		if !responded {
			if firstErr == "" {
				firstErr = "no store response"
			}
			res[cur] = firstErr
		}
		cur, firstErr, responded = "", "", false
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "I: Sending file: "):
			flush()
			cur = strings.TrimPrefix(line, "I: Sending file: ")
		case cur == "":
		case strings.HasPrefix(line, "I: Received Store Response ("):
			status := strings.TrimSuffix(strings.TrimPrefix(line, "I: Received Store Response ("), ")")
			responded = true
			// Warning statuses (coercion, elements discarded) mean stored.
			if strings.HasPrefix(status, "Success") || strings.HasPrefix(status, "Warning") {
				res[cur] = ""
			} else {
				res[cur] = "refused by Orthanc: " + status
			}
		case (strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "F: ")) && firstErr == "" && !responded:
			firstErr = strings.TrimSpace(line[3:])
		}
	}
	flush()
	return res
}

// expandFiles replaces directories by the regular files below them and
// drops duplicates.
func expandFiles(args []string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
	}
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			add(a)
			continue
		}
		err = filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				add(p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if len(files) == 0 && len(args) > 0 {
		return nil, errors.New("no files to send")
	}
	return files, nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
