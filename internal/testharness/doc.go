// Package testharness starts real servers (Orthanc, dcmtk's storescu) for
// integration tests.
//
// The testing.TB helpers fail or skip the test on error. Integration tests
// must never skip silently in CI: when the environment variable CI is
// non-empty, a missing binary fails the test instead of skipping it.
//
// Programs that are not tests (a benchmark command) can use the
// error-returning core: LaunchOrthanc, (*Orthanc).Restart, (*Orthanc).Close,
// (*Orthanc).StoreFiles and (*Orthanc).Do; (*Orthanc).PID gives the process
// to measure (CPU time, memory).
//
// Orthanc runs in the Release the options name, 1.10 or 1.12: the host's
// Orthanc when its --version is that release (1.10 on Debian bookworm,
// 1.12 on trixie), else Debian's package of it in a Debian tree of its own
// (scripts/orthanc-tree.sh), run through that tree's dynamic loader.
// ForEachRelease runs a test on each release under test
// (STOWLINE_ORTHANC_RELEASES, by default the host's then the other when
// its tree is present); the zero Release is the first of them.
//
// Findings the helpers encode (Orthanc 1.10.1, DICOMweb plugin 1.7,
// dcmtk 3.6.7; Orthanc 1.12.7 and DICOMweb 1.20 behave the same here):
//   - A C-STORE (storescu) re-encodes the data set: undefined-length
//     sequences become explicit-length, trailing padding is dropped, so
//     stored files are not byte-identical to the originals (StoreSCU still
//     keeps each file's transfer syntax). Upload (POST /instances) and STOW-RS keep every
//     byte, even of a bare data set without file meta information.
//   - Orthanc keeps the first copy of an instance: sending it again
//     answers "AlreadyStored" and does not replace the bytes.
//   - dcmtk disables Nagle's algorithm only with TCP_NODELAY=1 in the
//     environment; without it every C-STORE costs ~40-90 ms.
package testharness
