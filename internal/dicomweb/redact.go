package dicomweb

import (
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/events"
)

// redactBody is the text of a destination's answer fit for logs, dead
// letters and reports: without the credentials a gateway may echo, nor
// the attribute values (patient data) a DICOM server quotes or answers.
func redactBody(s string) string {
	return redactValues(redactDICOMValues(auth.RedactTokens(s)))
}

// quotedValue finds a value a destination quotes after "Content" or
// "Value" in an error text. Azure's DICOM service writes
// `DICOM100: (0010,0020) - Content "<the value>" does not validate VR LO`,
// which for a patient's ID, name or birth date is PHI; the text goes to
// logs and dead letters. In a JSON body the quotes are escaped, as \" or
// as \u0022 and \u0027 (System.Text.Json's default encoder, which Azure's
// DICOM service keeps, writes "Dicom element \u0027PatientName\u0027 with
// value \u0027...\u0027"), and escaped again when a gateway wraps that
// body in a JSON string of its own (\\\", \\u0027).
//
// The keyword may be followed by a colon or an equals sign (`value:
// "..."`, `value="..."`) and, in a JSON body, be a key itself
// (`"value": "..."`).
var quotedValue = regexp.MustCompile(`(?i)\b(?:content|value)(?:\\*")?(?:\s+|\s*[:=]\s*)(\\*"|\\*'|\\+u0022|\\+u0027)`)

// vrNamed finds the VR an error text names after a value (Azure's "does
// not validate VR LO", "VR \u0027PN\u0027").
//
// Before another attribute's tag, "(0020,000D)", or another quote: those
// name another value's.
var vrNamed = regexp.MustCompile(`^[^.;\n()"']{0,80}?\bVR[\s\\'"]*(?:u00(?:22|27))?([A-Z]{2})\b`)

// valueRemoved stands for a removed value.
const valueRemoved = "[value removed]"

// redactValues replaces the values a destination quotes in an error text
// with valueRemoved, except a UID (digits and dots) the text says is one
// (VR UI) and DICOM's own UIDs (1.2.840.10008..., a transfer syntax, a
// SOP class): a Swiss AHV number (756.1234.5678.97) is a Patient ID
// shaped like a UID. An empty value stays. An unterminated value (a text
// cut short) is removed to the end.
func redactValues(s string) string {
	if !quotedValue.MatchString(s) {
		return s
	}
	var b strings.Builder
	for {
		loc := quotedValue.FindStringSubmatchIndex(s)
		if loc == nil {
			b.WriteString(s)
			return b.String()
		}
		quote := s[loc[2]:loc[3]]
		b.WriteString(s[:loc[1]])
		rest := s[loc[1]:]
		end := closingQuote(rest, quote)
		if end < 0 {
			b.WriteString(valueRemoved)
			return b.String()
		}
		if v := rest[:end]; strings.TrimSpace(v) == "" || isUIDText(v) && (strings.HasPrefix(v, dicomUIDRoot) || namedVR(rest[end+len(quote):]) == "UI") {
			b.WriteString(v)
		} else {
			b.WriteString(valueRemoved)
		}
		b.WriteString(quote)
		s = rest[end+len(quote):]
	}
}

// dicomUIDRoot is the root of the UIDs PS3.6 defines, never a patient's.
const dicomUIDRoot = "1.2.840.10008."

// namedVR is the VR an error text names for a value, in the words that
// follow it, "" if none.
func namedVR(after string) string {
	if m := vrNamed.FindStringSubmatch(after); m != nil {
		return m[1]
	}
	return ""
}

// closingQuote is the index in rest of the quote that ends a value, -1
// if none. Inside a value: a quote escaped more than the value's (\\\"
// in a value quoted \"), an apostrophe (a quote between letters or
// digits: O'Brien), and a quotation (a quote after anything but a letter
// or digit, before anything but a space, the text's end or punctuation
// that closes (",;:)]}\"), to the next quote: SMITH^"BOBBY" ROBERT,
// DOE^JANE ("JJ") MARIE). Where that reads too far, more is removed,
// never less.
func closingQuote(rest, quote string) int {
	escapes := len(quote) - len(strings.TrimLeft(quote, `\`))
	inner := false
	for i := 0; i < len(rest); i++ {
		if !strings.HasPrefix(rest[i:], quote) {
			continue
		}
		if escapes > 0 && i > 0 && rest[i-1] == '\\' {
			continue // escaped more than the value's quote
		}
		after := rest[i+len(quote):]
		next := nextRune(after)
		before, _ := utf8.DecodeLastRuneInString(rest[:i])
		switch {
		case inner:
			inner = false
		case alnum(before) && alnum(next):
			// an apostrophe
		case !alnum(before) && after != "" && !unicode.IsSpace(next) && !strings.ContainsRune(`,;:)]}\`, next):
			inner = true
		default:
			return i
		}
	}
	return -1
}

func alnum(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// A DICOM data set in a JSON (PS3.18 F) or XML (PS3.19 A) answer holds
// its values in Value arrays, person names in Alphabetic, Ideographic and
// Phonetic (JSON) or their name components (XML). A destination may echo
// a data set in an error answer or a malformed one, possibly inside a
// gateway's own JSON string (its quotes then escaped, once or more);
// those texts go to logs and dead letters.
//
// Only the values of an attribute of VR UI are kept: a Patient ID may be
// shaped like a UID (a Swiss AHV number, 756.1234.5678.97). An XML
// writer may give the elements a namespace prefix (dcm:Value) and a
// value may be a CDATA section, cut short at the end of the text too.
var (
	jsonValueKey = regexp.MustCompile(`(?i)\\*"(Value|Alphabetic|Ideographic|Phonetic)\\*"\s*:\s*`)
	jsonVRUI     = regexp.MustCompile(`\\*"vr\\*"\s*:\s*\\*"UI\\*"`)
	xmlValue     = regexp.MustCompile(`(<(?:[\w.-]+:)?(?:Value|FamilyName|GivenName|MiddleName|NamePrefix|NameSuffix)\b[^>]*>)((?:<!\[CDATA\[(?:[\s\S]*?\]\]>|[\s\S]*$)|[^<])*)`)
	xmlAttribute = regexp.MustCompile(`<(?:[\w.-]+:)?DicomAttribute\b[^>]*>`)
	xmlVRUI      = regexp.MustCompile(`\bvr\s*=\s*["']UI["']`)
)

// redactDICOMValues replaces the values of a DICOM data set in s with
// valueRemoved, except those of VR UI, and keeps its structure. A value
// cut at the end of s is removed too.
func redactDICOMValues(s string) string {
	var b strings.Builder
	for {
		loc := jsonValueKey.FindStringSubmatchIndex(s)
		if loc == nil {
			b.WriteString(s)
			break
		}
		// The attribute's "vr" precedes its "Value" in the same object,
		// as PS3.18 F.2.2 writes them; one written after it, or a name
		// component's key, leaves the value removed.
		keepUIDs := strings.EqualFold(s[loc[2]:loc[3]], "Value") && jsonVRUI.MatchString(s[strings.LastIndexByte(s[:loc[0]], '{')+1:loc[0]])
		b.WriteString(s[:loc[1]])
		s = s[loc[1]:]
		if strings.HasPrefix(s, "[") {
			// A Value array: its strings, until its end or an item (a
			// person name's or a sequence's object, redacted by key).
			b.WriteByte('[')
			s = s[1:]
			for len(s) > 0 && s[0] != ']' && s[0] != '{' {
				if q := quoteAt(s); q > 0 {
					s = writeRedactedString(&b, s, q, keepUIDs)
					continue
				}
				b.WriteByte(s[0])
				s = s[1:]
			}
			continue
		}
		if q := quoteAt(s); q > 0 {
			s = writeRedactedString(&b, s, q, keepUIDs)
		}
	}
	return redactXMLValues(b.String())
}

// redactXMLValues replaces the values of a PS3.19 data set in s with
// valueRemoved, except those of an attribute of VR UI.
func redactXMLValues(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range xmlValue.FindAllStringSubmatchIndex(s, -1) {
		b.WriteString(s[last:m[3]])
		last = m[1]
		value := s[m[4]:m[5]]
		if strings.TrimSpace(value) == "" || isUIDText(value) && xmlVRUI.MatchString(enclosingAttribute(s[:m[0]])) {
			b.WriteString(value)
			continue
		}
		b.WriteString(valueRemoved)
	}
	b.WriteString(s[last:])
	return b.String()
}

// enclosingAttribute is the start tag of the last DicomAttribute element
// in before, "" if none: the attribute of a value that follows it.
func enclosingAttribute(before string) string {
	all := xmlAttribute.FindAllString(before, -1)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1]
}

// quoteAt is the length of the quote that opens a string at the start
// of s, its escaping backslashes included (", \", \\\"...), 0 if none.
func quoteAt(s string) int {
	n := len(s) - len(strings.TrimLeft(s, `\`))
	if n < len(s) && s[n] == '"' {
		return n + 1
	}
	return 0
}

// writeRedactedString writes the string that opens s with a quote of
// length q, its value removed unless it is a UID kept (keepUIDs), and
// returns what follows it. It ends at a quote escaped as its opening one
// (exactly q-1 backslashes before it), or at the end of s.
func writeRedactedString(b *strings.Builder, s string, q int, keepUIDs bool) string {
	quote := s[:q]
	rest := s[q:]
	end := -1
	for i := 0; i < len(rest); i++ {
		if rest[i] != '"' {
			continue
		}
		j := i
		for j > 0 && rest[j-1] == '\\' {
			j--
		}
		if i-j == q-1 {
			end = j
			break
		}
	}
	b.WriteString(quote)
	if end < 0 {
		b.WriteString(valueRemoved + quote)
		return ""
	}
	if v := rest[:end]; strings.TrimSpace(v) == "" || keepUIDs && isUIDText(v) {
		b.WriteString(v)
	} else {
		b.WriteString(valueRemoved)
	}
	b.WriteString(quote)
	return rest[end+q:]
}

// isUIDText reports whether v is empty or a UID of two components or
// more (PS3.5 9.1), which stowline logs on purpose: a Patient ID,
// accession number or date of digits only is no UID.
func isUIDText(v string) bool {
	v = strings.TrimSpace(v)
	return v == "" || strings.Contains(v, ".") && events.ValidUID(v)
}

// nextRune is the first character of s, a JSON \u escape (escaped once
// or more) read as the character it stands for (D\u0027\u00C1vila);
// utf8.RuneError if none.
func nextRune(s string) rune {
	if e := strings.TrimLeft(s, `\`); len(e) < len(s) && len(e) >= 5 && e[0] == 'u' {
		if n, err := strconv.ParseUint(e[1:5], 16, 32); err == nil {
			return rune(n)
		}
	}
	r, _ := utf8.DecodeRuneInString(s)
	return r
}
