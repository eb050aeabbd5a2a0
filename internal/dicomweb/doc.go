// Package stow is a streaming DICOMweb STOW-RS client (DICOM PS3.18 §10.5).
//
// A Client POSTs DICOM instances to {base}/studies as one
// multipart/related; type="application/dicom" request. Instances are
// streamed one after another through an io.Pipe (chunked transfer
// encoding), so a study is never held in memory: each Part is opened only
// when it is written and closed right after.
//
// The server's answer (a Store Instances Response Module, PS3.18 Annex I)
// is parsed by ParseResponse into a Result. 200 OK and 202 Accepted both
// return a Result; the caller decides what to retry with Result.Missing and
// Result.Failed. Every other status is returned as an *HTTPError, which
// still carries the parsed Result when the body was a STOW response (Orthanc
// answers 400 and 409 with a STOW body that lists instances it did store).
//
// The multipart encoder (MultipartWriter), the response parser
// (ParseResponse) and the batch splitter (Batches) are exported so they
// can be tested and reused on their own.
package dicomweb
