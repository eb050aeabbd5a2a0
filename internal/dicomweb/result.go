package dicomweb

import "fmt"

// Result is a parsed Store Instances Response Module (PS3.18 Annex I).
type Result struct {
	// StatusCode is the HTTP status of the response (0 from parseResponse).
	StatusCode int
	// RetrieveURL (0008,1190) of the study, if the server sent one.
	RetrieveURL string
	// Stored lists the ReferencedSOPSequence (0008,1199): instances the
	// server stored.
	Stored []Instance
	// Failed lists the FailedSOPSequence (0008,1198).
	Failed []FailedInstance
	// OtherFailures lists the OtherFailuresSequence (0008,119A): failures
	// not tied to a SOP Instance, so the UIDs are often empty.
	OtherFailures []FailedInstance
	// Warnings lists the stored instances that came with a WarningReason
	// (0008,1196) or error comments (Azure's FailedAttributesSequence).
	Warnings []Warning
	// BytesSent is the request body size actually sent, framing included
	// (0 from parseResponse).
	BytesSent int64
	// Resent: this answers the request sent a second time, after the
	// first got no answer on a reused connection (Client.Store). The
	// server may have stored the instances from the first, whole or in
	// part: an "already exists" for one may be its copy of those.
	Resent bool
}

// Instance is one item of the ReferencedSOPSequence.
type Instance struct {
	SOPClassUID    string
	SOPInstanceUID string
	RetrieveURL    string
	// WarningReason is 0 when the instance was stored without warning.
	WarningReason int
}

// FailedInstance is one item of the FailedSOPSequence or
// OtherFailuresSequence.
type FailedInstance struct {
	SOPClassUID    string
	SOPInstanceUID string
	// FailureReason (0008,1197); see FailureReasonText. 0 if the server
	// sent none or an unparseable one.
	FailureReason int
	// Comments are ErrorComment (0000,0902) values, direct or inside a
	// FailedAttributesSequence (0074,1048) as Azure sends them.
	Comments []string
}

// Warning is a stored instance that came with a warning.
type Warning struct {
	SOPClassUID    string
	SOPInstanceUID string
	WarningReason  int
	Comments       []string
}

// Missing returns the SOP Instance UIDs of sent that are not in the
// ReferencedSOPSequence, in order and without duplicates. Failed instances
// are missing too, as is everything when r is nil: the caller decides which
// to resend.
func (r *Result) Missing(sent []string) []string {
	stored := make(map[string]struct{})
	if r != nil {
		for _, in := range r.Stored {
			stored[in.SOPInstanceUID] = struct{}{}
		}
	}
	var out []string
	seen := make(map[string]struct{})
	for _, uid := range sent {
		if _, ok := stored[uid]; ok {
			continue
		}
		if _, ok := seen[uid]; ok {
			continue
		}
		seen[uid] = struct{}{}
		out = append(out, uid)
	}
	return out
}

// Failure Reason (0008,1197) values: PS3.18 Table I.2-2, and the codes the
// Azure DICOM service documents in its conformance statement v2.
const (
	FailureProcessing                 = 0x0110 // 272
	FailureSOPClassNotSupported       = 0x0122 // 290
	FailureNotAuthorized              = 0x0124 // 292: Refused: Not Authorized (PS3.7 C.5; dcm4chee's "Storage denied")
	FailureTransferSyntaxNotSupported = 0xC122 // 49442
	failureAzureValidation            = 0xA900 // 43264
	failureAzureStudyMismatch         = 0xA901 // 43265
	FailureAzureAlreadyExists         = 0xB00E // 45070
	FailureAzureBeingCreated          = 0xB00F // 45071
)

// Warning Reason (0008,1196) values that say the destination stored the
// instance changed (PS3.18 Table I.2-1).
const (
	WarningCoercion          = 0xB000 // 45056: coercion of data elements
	WarningElementsDiscarded = 0xB006 // 45062
)

// ArchiveRefusal reports dcm4chee-arc's own Failure Reasons 0xA770 to
// 0xA77F (StoreService: duplicate rejection note, subsequent occurrence
// of a rejected object, Patient ID missing or conflicting, conflicting
// patient attributes, retention): refusals of the instance as sent,
// though in the "out of resources" range of PS3.4.
func ArchiveRefusal(code int) bool { return code&0xFFF0 == 0xA770 }

// FailureReasonText describes a Failure Reason code for logs.
func FailureReasonText(code int) string {
	switch code {
	case FailureProcessing:
		return "processing failure"
	case FailureSOPClassNotSupported:
		return "referenced SOP Class not supported"
	case FailureTransferSyntaxNotSupported:
		return "referenced Transfer Syntax not supported"
	case FailureNotAuthorized:
		return "refused: not authorized (the destination's permissions deny storing it)"
	case failureAzureValidation:
		return "data set does not match SOP Class (Azure: instance failed validation)"
	case failureAzureStudyMismatch:
		return "StudyInstanceUID does not match the study in the request URL"
	case FailureAzureAlreadyExists:
		return "instance already exists"
	case FailureAzureBeingCreated:
		// Azure's conformance statement v2: also a store that failed and
		// was not cleaned up, which stays so until the instance is deleted.
		return "instance pending at the destination: being created by another request, or left by an earlier store that failed and was not cleaned up (Azure: delete it, then store it again)"
	// PS3.7 C.4, C.5.
	case 0x0106:
		return "invalid attribute value"
	case 0x0117:
		return "invalid object instance"
	case 0x0119:
		return "class-instance conflict"
	case 0x0120:
		return "missing attribute"
	case 0x0121:
		return "missing attribute value"
	case 0x0210:
		return "duplicate invocation (busy)"
	case 0x0213:
		return "resource limitation"
	}
	switch {
	case ArchiveRefusal(code):
		return fmt.Sprintf("refused by the archive (dcm4chee 0x%04X: a Patient ID conflicting with the study's or missing, or a rejected instance sent again; see its log)", code)
	case code&0xFF00 == 0xA700:
		return "refused: out of resources"
	case code&0xFF00 == 0xA900:
		return "data set does not match SOP Class"
	case code&0xF000 == 0xC000:
		return "cannot understand"
	}
	return fmt.Sprintf("failure reason %d (0x%04X)", code, code)
}
