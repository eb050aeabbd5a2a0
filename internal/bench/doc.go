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
// ingest rate from local files). The same stowline binary also forwards
// the study into a discard STOW-RS sink (internal/stowsink, served by the
// benchmark process on a loopback port) that parses the multipart body and
// answers like a real server: that measures stowline and its source
// without the destination, and is compared with A's raw parallel read
// rate (the "x-A-read" ratio). Optional cases forward with STOW_VERIFY=qido
// or with STOW_DEIDENTIFY=basic (into B and into the sink, the copies
// checked by count and keyed UIDs) against the plain cases of the same
// setting. Every case runs several rounds in alternating order; the
// medians are reported. STOWLINE_BENCH_SINK_LATENCY and _SINK_RATE make
// the sinks far (a wait before each answer, each request body read at a
// capped rate, as a distant cloud endpoint's TCP stream is): Orthanc's
// own client into the sink (native-orthanc-stow-to-sink) then measures
// against stowline under a per-stream cap; every sink case reports how
// many requests the sink answered and the most it served at once.
//
// BenchmarkLargeStudy generates one large study (by default 192 instances
// of 2048x2048 pixels and one of 16384x16384, 2 GiB) straight into a real
// Orthanc A, forwards it with the stowline binary into the sink, samples
// stowline's RSS and its anonymous part (RssAnon, the process's own
// memory) every 50 ms and checks its peak (VmHWM) against the 64 MiB
// target; A's raw read rate of the same study is the reference.
//
// See BENCHMARKS.md for the commands and the figures. The settings
// (STOWLINE_BENCH_* environment variables) and their defaults are listed
// in settingsDoc, largeSettingsDoc, ingestSettingsDoc and replicasDoc.
//
// cmd/stowline-profiled is cmd/stowline with CPU-profile, heap-profile and
// execution-trace hooks, used only when STOWLINE_BENCH_PROFILE_DIR is set;
// cmd/ingest-profiled is the same for cmd/ingest.
//
// BenchmarkIngest compares the webhook of separate cmd/ingest processes
// with raw synchronous JetStream publishes of the same events, on one
// nats-server in the benchmark process: events per second and latency
// percentiles.
//
// BenchmarkReplicas measures scale-out: the same queue of generated
// studies in a real Orthanc A is forwarded by 1, 2 and 4 separate
// cmd/forwarder processes sharing the durable consumer on one nats-server
// (run in the benchmark process, on loopback TCP), every replica with the
// same settings and the same fixed share of STOW_PARALLEL_REQUESTS, to
// the discard sink on loopback and to the same
// sink behaving like a distant cloud service (latency and a bandwidth cap
// per request), optionally to a real Orthanc B. Every measurement deletes
// the event stream, starts the replicas together, publishes every study's
// event and times until the destination holds every instance; it checks
// that each event was delivered once. Its settings are the
// STOWLINE_BENCH_REPLICAS_* variables.
package bench
