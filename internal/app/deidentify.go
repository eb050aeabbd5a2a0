package app

import (
	"fmt"
	"log/slog"
	"slices"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/status"
)

// deidentReadable are the syntaxes sent as they are to a de-identifying
// destination without a transfer syntax list: every standard syntax
// whose data set is Little Endian and not deflated, which the rewrite
// reads (JPIP, whose pixel data is a link, left out); Explicit VR
// Little Endian first, the target of conversions. An instance in a
// syntax missing here is not sent: a lossy one is refused at once (with
// advice to list the syntax in the variable the operator did not set), a lossless
// one goes to an Orthanc conversion that fails for what it cannot
// decode (JPEG XL).
var deidentReadable = []string{
	"1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.98",
	"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
	"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
	"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
	"1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.1",
	"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112",
	"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
	"1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106",
	"1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101.1", "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103.1",
	"1.2.840.10008.1.2.4.104.1", "1.2.840.10008.1.2.4.105.1", "1.2.840.10008.1.2.4.106.1",
	"1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
	// Retired JPEG processes, still in old archives.
	"1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55",
	"1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.58", "1.2.840.10008.1.2.4.59", "1.2.840.10008.1.2.4.60",
	"1.2.840.10008.1.2.4.61", "1.2.840.10008.1.2.4.62", "1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64",
	"1.2.840.10008.1.2.4.65", "1.2.840.10008.1.2.4.66",
}

// deidentify wraps the destination of o in the de-identifying rewrite
// when the destination's STOW_DEIDENTIFY is basic, and returns its key's
// fingerprint (status.NoKey without). The key file is read once, here;
// its content is never logged.
func deidentify(o *forward.Options, d *config.NamedDestination, log *slog.Logger) (fingerprint string, err error) {
	if !d.Deidentifies() {
		return status.NoKey, nil
	}
	k, err := keyer(d)
	if err != nil {
		return "", err
	}
	// Checked with the configuration already (exit 2): an error here
	// names the destination only.
	opts, err := d.DeidentOptions()
	if err != nil {
		return "", fmt.Errorf("destination %q: %w", d.Name, err)
	}
	di, err := deident.New(k, opts)
	if err != nil {
		return "", fmt.Errorf("destination %q: %w", d.Name, err)
	}
	dst, err := forward.Deidentified(o.Destination, di, forward.DeidentifyOptions{Setting: d.VarName("STOW_DEIDENTIFY"),
		ExactLength: o.ExactLength, DestinationName: d.Name, Registerer: o.Registerer})
	if err != nil {
		return "", err
	}
	o.Destination = dst
	// Orthanc converts the encodings the rewrite cannot read.
	if len(o.TransferSyntaxes) == 0 {
		o.TransferSyntaxes, o.TransferSyntaxesImplied = deidentReadable, true
	} else {
		o.TransferSyntaxes = slices.DeleteFunc(slices.Clone(o.TransferSyntaxes), func(ts string) bool {
			return !deident.ReadsSyntax(ts)
		})
		if len(o.TransferSyntaxes) == 0 {
			// Refused with the configuration (exit 2); a profile's
			// list always has Explicit VR Little Endian.
			return "", fmt.Errorf("destination %q: no transfer syntax the de-identifying rewrite writes", d.Name)
		}
	}
	// The key's fingerprint, never the key: every forwarder of the
	// destination must log the same one (docs/deidentification.md, Rotation).
	log.Info("the destination receives de-identified copies (PS3.15 basic profile, keyed pseudonyms)", "destination", d.Name,
		"options", []string(d.Options), "burned_in", d.BurnedIn, "keep", len(opts.Keep), "remove", len(opts.Remove),
		"key_fingerprint", k.Fingerprint())
	return k.Fingerprint(), nil
}

// keyer reads the key file of a de-identifying destination; its
// content is never logged.
func keyer(d *config.NamedDestination) (*deident.Keyer, error) {
	key, err := deident.ReadKeyFile(d.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.VarName("DEIDENTIFY_KEY_FILE"), err)
	}
	k, err := deident.NewKeyer(key, d.PatientPrefix)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.VarName("DEIDENTIFY_KEY_FILE"), err)
	}
	return k, nil
}
