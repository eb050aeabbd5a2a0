package app

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deident"
)

const pseudonymUsage = `Usage: forwarder pseudonym [--destination NAME] (--uid UID | --patient-id ID | --find PSEUDONYM | --fingerprint)

Computes, with the destination's de-identification key, the pseudonym a
de-identified destination received for one original value: --uid for a
Study, Series, SOP Instance or any other UID, --patient-id for a Patient ID
(also the date offset of the patient's dates, with retain-dates); with
--uid - or --patient-id - the value is read from standard input, which
keeps a Patient ID out of the process list, the shell's history and
kubectl exec's audit log. --find
re-identifies: it reads candidate originals from standard input, one a
line (UIDs or Patient IDs, e.g. exported from Orthanc or the RIS), and
prints the one whose pseudonym is PSEUDONYM. The key is the destination's
DEIDENTIFY_KEY_FILE (DESTINATION_<NAME>_DEIDENTIFY_KEY_FILE with
--destination); it never leaves the site. Run it on an operator's request
only: it reveals identity (docs/deidentification.md). --fingerprint prints
the key's fingerprint alone, which every forwarder of the destination logs
at start (key_fingerprint) and forwarder check prints: the key file is read
as the forwarder reads it, and stays off any command line.

`

// RunPseudonym is the forwarder's pseudonym command.
func RunPseudonym(_ context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	const program = "forwarder pseudonym"
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	fs.SetOutput(stderr)
	destination := fs.String("destination", "", "the destination named in DESTINATIONS whose key to use (default: the single destination's variables)")
	uid := fs.String("uid", "", "an original UID (-: read it from standard input)")
	patientID := fs.String("patient-id", "", "an original Patient ID (-: read it from standard input)")
	find := fs.String("find", "", "a pseudonym to re-identify from candidates on standard input")
	fingerprint := fs.Bool("fingerprint", false, "print the key's fingerprint (as the forwarder logs it), not a pseudonym")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, pseudonymUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &usageError{err}
	}
	if *showVersion {
		printVersion(stdout, program)
		return nil
	}
	set := 0
	for _, v := range []string{*uid, *patientID, *find} {
		if v != "" {
			set++
		}
	}
	if *fingerprint {
		set++
	}
	if set != 1 || fs.NArg() > 0 {
		return usagef("%s: give exactly one of --uid, --patient-id, --find, --fingerprint\n\n%s", program, pseudonymUsage)
	}
	name := func(v string) string { return v }
	if *destination != "" {
		prefix := config.DestinationVarPrefix(*destination)
		name = func(v string) string { return prefix + v }
	}
	keyVar, prefixVar := name("DEIDENTIFY_KEY_FILE"), name("STOW_DEIDENTIFY_PATIENT_PREFIX")
	if getenv(keyVar) == "" {
		return usagef("%s: %s is not set", program, keyVar)
	}
	key, err := deident.ReadKeyFile(getenv(keyVar))
	if err != nil {
		return fmt.Errorf("%s: %s: %w", program, keyVar, err)
	}
	patientPrefix := "ANON-"
	if v := getenv(prefixVar); v != "" {
		patientPrefix = v
	}
	k, err := deident.NewKeyer(key, patientPrefix)
	if err != nil {
		return fmt.Errorf("%s: %w", program, err)
	}
	for _, v := range []*string{uid, patientID} {
		if *v == "-" {
			if *v, err = firstLine(stdin); err != nil {
				return fmt.Errorf("%s: %w", program, err)
			}
		}
	}
	switch {
	case *fingerprint:
		fmt.Fprintln(stdout, k.Fingerprint())
	case *uid != "":
		fmt.Fprintln(stdout, k.UID(*uid))
	case *patientID != "":
		fmt.Fprintf(stdout, "%s\t(dates moved back %d days with retain-dates)\n", k.PatientID(*patientID), k.DateShift(*patientID))
	default:
		return findPseudonym(k, *find, stdin, stdout, program)
	}
	return nil
}

// firstLine is the first line of r that is not blank, trimmed.
func firstLine(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v := strings.TrimSpace(sc.Text()); v != "" {
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read standard input: %w", err)
	}
	return "", errors.New("standard input holds no value")
}

func findPseudonym(k *deident.Keyer, pseudonym string, stdin io.Reader, stdout io.Writer, program string) error {
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		c := strings.TrimSpace(sc.Text())
		if c == "" {
			continue
		}
		n++
		if k.UID(c) == pseudonym {
			fmt.Fprintf(stdout, "UID\t%s\n", c)
			return nil
		}
		if k.PatientID(c) == pseudonym {
			fmt.Fprintf(stdout, "PatientID\t%s\n", c)
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: read candidates: %w", program, err)
	}
	return fmt.Errorf("%s: none of the %d candidates maps to %s under this key", program, n, pseudonym)
}
