package dicomweb

import "testing"

// BenchmarkDelimiterDetector scans 16-bit pixel data like a CT's (12-bit
// values, so every high byte is 0x00-0x0F and one byte in 32 is CR) for
// a newBoundary delimiter, 256 KiB at a time as Client does.
func BenchmarkDelimiterDetector(b *testing.B) {
	boundary, err := newBoundary()
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, DefaultBufferSize)
	for i := 0; i < len(data)/2; i++ {
		v := uint16(i*3+7) & 0x0FFF
		data[2*i], data[2*i+1] = byte(v), byte(v>>8)
	}
	d := newDelimiterDetector(boundary)
	d.reset()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if d.scan(data) {
			b.Fatal("false positive")
		}
	}
}
