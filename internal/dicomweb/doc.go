// Package dicomweb talks to the DICOMweb destination: a streaming STOW-RS
// client (DICOM PS3.18 §10.5), and the check `forwarder check` runs
// before any study flows.
//
// A Client POSTs DICOM instances to {base}/studies as one
// multipart/related; type="application/dicom" request. Instances are
// streamed one after another (chunked transfer encoding, or a
// Content-Length with WithContentLength), so a study is never held in
// memory: each Part is opened only when it is written and closed right
// after. The body is encoded as the transport sends it, in the
// transport's goroutine, straight into the buffer that goes to the
// connection.
//
// The server's answer (a Store Instances Response Module, PS3.18 Annex I)
// is parsed into a Result. 200 OK and 202 Accepted both return a Result;
// the caller decides what to retry with Result.Stored and Result.Failed.
// Every other status is returned as an *HTTPError, which still carries the
// parsed Result when the body was a STOW response (Orthanc answers 400 and
// 409 with a STOW body that lists instances it did store). An answer is
// read up to a bound in bytes, and refused unread when it holds more JSON
// values or XML tags than an answer about the request's instances
// could (answerNodes): decoded, a few bytes a value take hundreds.
//
// Batches splits a study's parts into requests of bounded size.
//
// Check checks a destination's setup: it obtains a credential the way the
// forwarder will (an OAuth2 token, or AWS credentials for SigV4), reports
// what can be said of it without showing it, and makes one authenticated,
// read-only request to the destination's DICOMweb API.
package dicomweb
