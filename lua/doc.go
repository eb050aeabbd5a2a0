// Package lua holds no Go code: lua/stowline.lua is the script Orthanc
// runs, and its test runs it in each Orthanc release under test against a
// stand-in ingest.
package lua
