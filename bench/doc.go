// Package bench holds stowline's end-to-end benchmarks. They start real
// servers, so they live apart from the unit and integration tests and run
// only with -bench (go test ./... runs none of them).
//
// BenchmarkPipeline forwards one generated CT study (300 instances of
// 512x512 16-bit pixels by default, about 157 MB) from a real Orthanc A to a
// real Orthanc B (DICOMweb plugin) three ways in the same run: with Orthanc's
// own STOW-RS client (POST A:/dicom-web/servers/B/stow, Synchronous), with
// the real stowline binary (built from ./cmd/stowline, single-host mode,
// run as a separate process) under several forwarder settings, and with
// reference transfers that bound each side (A's raw read rate, B's STOW-RS
// ingest rate from local files). Every case runs several rounds in
// alternating order; the medians are reported. See BENCHMARKS.md for the
// command, the settings (STOWLINE_BENCH_* environment variables) and the
// figures.
//
// cmd/stowline-profiled is cmd/stowline with CPU-profile and execution-trace
// hooks, used only when STOWLINE_BENCH_PROFILE_DIR is set.
package bench
