//go:build !linux

package dicomweb

import "time"

// processCPU is not measured here: BenchmarkStore reports no CPU time.
func processCPU() time.Duration { return 0 }
