package testharness

import (
	"bufio"
	"compress/flate"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Transfer syntaxes whose data set encoding the harness reads.
const (
	implicitVRLittleEndian         = "1.2.840.10008.1.2"
	explicitVRLittleEndian         = "1.2.840.10008.1.2.1"
	deflatedExplicitVRLittleEndian = "1.2.840.10008.1.2.1.99"
	explicitVRBigEndian            = "1.2.840.10008.1.2.2"
)

// errNotDICOM is returned when a file cannot be read as DICOM at all.
var errNotDICOM = errors.New("not a readable DICOM file")

// FileInfo is what the harness reads from the start of a DICOM file: just
// enough to negotiate a presentation context and to compare data sets.
type FileInfo struct {
	// SOPClassUID and SOPInstanceUID are (0008,0016) and (0008,0018) of
	// the data set.
	SOPClassUID, SOPInstanceUID string
	// MediaStorageSOPClassUID and MediaStorageSOPInstanceUID are
	// (0002,0002) and (0002,0003) of the file meta information. They
	// should equal the data set's, but need not: three samples carry a
	// different (0002,0003).
	MediaStorageSOPClassUID, MediaStorageSOPInstanceUID string
	// TransferSyntaxUID is (0002,0010), or for a bare data set the one
	// guessed from its first element: Explicit or Implicit VR Little
	// Endian.
	TransferSyntaxUID string
	// HasMeta is false for a bare data set without preamble and file meta
	// information (Orthanc accepts and keeps such files).
	HasMeta bool
	// DatasetOffset is where the data set starts: after the file meta
	// group, or 0 without one.
	DatasetOffset int64
}

// ReadFileInfo reads the file meta information of a DICOM file and the
// SOP Class/Instance UIDs of its data set (group 0008 only: it stops
// there).
func ReadFileInfo(path string) (FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileInfo{}, err
	}
	defer f.Close()
	info, err := readInfo(bufio.NewReader(f))
	if err != nil {
		return FileInfo{}, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// DatasetMD5 returns the hex MD5 of the data set in r, that is of the bytes
// after the file meta group (or of all bytes for a bare data set). The meta
// group may legitimately change when a file is forwarded; the data set
// must not.
func DatasetMD5(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if _, err := skipMeta(br, nil); err != nil {
		return "", err
	}
	h := md5.New()
	if _, err := io.Copy(h, br); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func readInfo(br *bufio.Reader) (FileInfo, error) {
	var info FileInfo
	n, err := skipMeta(br, &info)
	if err != nil {
		return FileInfo{}, err
	}
	if !info.HasMeta {
		first, err := br.Peek(8)
		if err != nil {
			return FileInfo{}, fmt.Errorf("%w: shorter than one element", errNotDICOM)
		}
		info.TransferSyntaxUID = implicitVRLittleEndian
		if isKnownVR(string(first[4:6])) {
			info.TransferSyntaxUID = explicitVRLittleEndian
		}
		scanDataset(br, info.TransferSyntaxUID, &info)
		if info.SOPClassUID == "" || info.SOPInstanceUID == "" {
			return FileInfo{}, fmt.Errorf("%w: no file meta information and no SOP Class/Instance UID in group 0008", errNotDICOM)
		}
		return info, nil
	}
	info.DatasetOffset = n
	if info.MediaStorageSOPClassUID == "" || info.TransferSyntaxUID == "" {
		return FileInfo{}, fmt.Errorf("%w: file meta information lacks (0002,0002) or (0002,0010)", errNotDICOM)
	}
	scanDataset(br, info.TransferSyntaxUID, &info)
	// An unreadable data set start is left to the real parsers (storescu,
	// Orthanc) to report; fall back to the meta values.
	if info.SOPClassUID == "" {
		info.SOPClassUID = info.MediaStorageSOPClassUID
	}
	if info.SOPInstanceUID == "" {
		info.SOPInstanceUID = info.MediaStorageSOPInstanceUID
	}
	return info, nil
}

// skipMeta consumes the preamble and the file meta group if present and
// returns how many bytes it consumed. With info non-nil it records the
// meta values.
func skipMeta(br *bufio.Reader, info *FileInfo) (int64, error) {
	head, err := br.Peek(132)
	if err != nil || string(head[128:132]) != "DICM" {
		// Short or no DICM prefix: a bare data set (or garbage).
		return 0, nil
	}
	if info != nil {
		info.HasMeta = true
	}
	n := int64(132)
	if _, err := br.Discard(132); err != nil {
		return 0, err
	}
	// Walk elements while the group is 0002 instead of trusting the group
	// length: some writers get it wrong, and readers such as DCMTK walk too.
	for {
		h, err := br.Peek(8)
		if err != nil {
			return 0, fmt.Errorf("%w: truncated file meta information", errNotDICOM)
		}
		if binary.LittleEndian.Uint16(h[0:]) != 0x0002 {
			return n, nil
		}
		elem := binary.LittleEndian.Uint16(h[2:])
		vr := string(h[4:6])
		hdr, length := 8, int64(binary.LittleEndian.Uint16(h[6:]))
		if isLongVR(vr) {
			h12, err := br.Peek(12)
			if err != nil {
				return 0, fmt.Errorf("%w: truncated file meta information", errNotDICOM)
			}
			hdr, length = 12, int64(binary.LittleEndian.Uint32(h12[8:]))
			if length == 0xFFFFFFFF {
				return 0, fmt.Errorf("%w: undefined length in file meta information", errNotDICOM)
			}
		}
		if _, err := br.Discard(hdr); err != nil {
			return 0, err
		}
		val, err := readValue(br, length, elem == 0x0002 || elem == 0x0003 || elem == 0x0010)
		if err != nil {
			return 0, fmt.Errorf("%w: truncated file meta element (0002,%04X)", errNotDICOM, elem)
		}
		n += int64(hdr) + length
		if info != nil {
			switch elem {
			case 0x0002:
				info.MediaStorageSOPClassUID = val
			case 0x0003:
				info.MediaStorageSOPInstanceUID = val
			case 0x0010:
				info.TransferSyntaxUID = val
			}
		}
	}
}

// readValue consumes a value and, if want, returns it as a trimmed string
// (the harness only reads UIDs, so a long value is not wanted).
func readValue(br *bufio.Reader, length int64, want bool) (string, error) {
	if !want || length > 256 {
		_, err := br.Discard(int(length))
		return "", err
	}
	b := make([]byte, length)
	if _, err := io.ReadFull(br, b); err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\x00 "), nil
}

// scanDataset reads the top-level elements of a data set up to
// (0008,0018) and records SOP Class and Instance UIDs. It stops quietly
// at anything it does not understand.
func scanDataset(br *bufio.Reader, transferSyntax string, info *FileInfo) {
	explicit := transferSyntax != implicitVRLittleEndian
	var bo binary.ByteOrder = binary.LittleEndian
	switch transferSyntax {
	case explicitVRBigEndian:
		bo = binary.BigEndian
	case deflatedExplicitVRLittleEndian:
		// The whole data set is a raw deflate stream.
		br = bufio.NewReader(flate.NewReader(br))
	}
	var prev uint32
	for {
		h, err := br.Peek(8)
		if err != nil {
			return
		}
		group, elem := bo.Uint16(h[0:]), bo.Uint16(h[2:])
		t := uint32(group)<<16 | uint32(elem)
		if t < prev || t > 0x00080018 {
			return // out of order (garbage) or past the UIDs we need
		}
		prev = t
		hdr, length := 8, int64(bo.Uint32(h[4:]))
		if explicit {
			vr := string(h[4:6])
			hdr, length = 8, int64(bo.Uint16(h[6:]))
			if isLongVR(vr) {
				h12, err := br.Peek(12)
				if err != nil {
					return
				}
				hdr, length = 12, int64(bo.Uint32(h12[8:]))
			}
		}
		if length == 0xFFFFFFFF {
			return // a sequence before (0008,0018): rare, give up
		}
		if _, err := br.Discard(hdr); err != nil {
			return
		}
		val, err := readValue(br, length, group == 0x0008 && (elem == 0x0016 || elem == 0x0018))
		if err != nil {
			return
		}
		if group == 0x0008 {
			switch elem {
			case 0x0016:
				info.SOPClassUID = val
			case 0x0018:
				info.SOPInstanceUID = val
			}
		}
	}
}

func isLongVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV":
		return true
	}
	return false
}

func isKnownVR(vr string) bool {
	if isLongVR(vr) {
		return true
	}
	switch vr {
	case "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
		"PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US":
		return true
	}
	return false
}

// ReadInfo is ReadFileInfo for a stream: it reads the file meta
// information and the data set's SOP Class/Instance UIDs from the start of
// br and leaves br positioned somewhere in group 0008 or just after it.
func ReadInfo(br *bufio.Reader) (FileInfo, error) { return readInfo(br) }
