// Package config reads stowline's configuration from the environment.
// Every public variable is declared once, on a struct field with an env tag,
// a default and a description, so parsing, `-h` and the docs agree.
package config

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"

	"github.com/caarlos0/env/v11"

	"github.com/stowline/stowline/internal/secretfile"
)

// fileSuffix names the variant of a secret variable that holds a file path
// (Docker and Kubernetes secrets) instead of the value.
const fileSuffix = "_FILE"

// Load fills dst, a pointer to a struct with env tags, from getenv.
// A field tagged secret:"true" may instead be given as VAR_FILE, a path
// whose content (trailing newline trimmed, not empty) is the value. Errors
// name the variable. If dst has a Validate() error method it runs last.
// A secret that cannot be read does not hide the other errors: they are
// all returned together.
func Load(getenv func(string) string, dst any) error {
	params, err := env.GetFieldParams(dst)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	secrets := secretKeys(reflect.TypeOf(dst))
	values := make(map[string]string, len(params))
	var secretErrs []error
	for _, p := range params {
		v := getenv(p.Key)
		if secrets[p.Key] {
			if v, err = readSecret(getenv, p.Key); err != nil {
				// Parse and check the rest with a stand-in, so one run
				// lists everything to fix, not only the unreadable file.
				secretErrs = append(secretErrs, err)
				v = standInSecret(p.Key)
			}
		}
		if v != "" {
			values[p.Key] = v
		}
	}
	return errors.Join(errors.Join(secretErrs...), load(getenv, dst, values))
}

// load parses values into dst, reads its dynamic variables and validates
// it.
func load(getenv func(string) string, dst any, values map[string]string) error {
	if err := env.ParseWithOptions(dst, env.Options{Environment: values}); err != nil {
		err = cleanEnvError(err, reflect.TypeOf(dst))
		if c, ok := dst.(conditionallyRequired); ok {
			// Validate won't run: name these missing ones too, so one run
			// lists everything to fix.
			err = errors.Join(err, c.missingRequired(getenv))
		}
		return err
	}
	var dynErr error
	if d, ok := dst.(dynamicVars); ok {
		// An unreadable secret file of a source or destination has a
		// stand-in too: only other errors stop before Validate.
		if dynErr = d.readDynamic(getenv); dynErr != nil && !onlySecretVarErrors(dynErr) {
			return dynErr
		}
	}
	if v, ok := dst.(interface{ Validate() error }); ok {
		return errors.Join(dynErr, v.Validate())
	}
	return dynErr
}

// secretVarError is a secret variable that could not be read: set both
// directly and as _FILE, or its file unreadable or empty.
type secretVarError struct{ err error }

func (e secretVarError) Error() string { return e.err.Error() }
func (e secretVarError) Unwrap() error { return e.err }

// standInSecret is the value a secret that could not be read takes
// while the other variables are checked: long and varied enough for the
// credential checks, and different for each variable so that no
// "must differ" check fires. Load returns an error with it, so it is
// never used.
func standInSecret(key string) string {
	return "unread-" + key + "-Qx7Wv2Kz9Jm4Rt8N"
}

// onlySecretVarErrors reports whether every error joined in err is a
// secretVarError.
func onlySecretVarErrors(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !onlySecretVarErrors(e) {
				return false
			}
		}
		return true
	}
	_, ok := err.(secretVarError)
	return ok
}

// readSecret returns the value of the secret variable key, given either
// directly or as key_FILE, the path of a file holding it (trailing newline
// trimmed; an empty one is an error). Errors name the variable, never the
// content.
func readSecret(getenv func(string) string, key string) (string, error) {
	v := getenv(key)
	path := getenv(key + fileSuffix)
	if path == "" {
		return v, nil
	}
	if v != "" {
		return "", secretVarError{fmt.Errorf("%s and %s%s are both set: set only one", key, key, fileSuffix)}
	}
	// An empty file is refused: read as unset, it would silently turn off
	// what the secret guards (INGEST_HMAC_SECRET's signatures,
	// ADMIN_TOKEN's page) or be reported as key missing although
	// key_FILE is set.
	v, err := secretfile.Read(path)
	if err != nil {
		return "", secretVarError{fmt.Errorf("%s%s: %w", key, fileSuffix, err)}
	}
	return v, nil
}

// conditionallyRequired is implemented by configuration with variables
// required only when others are unset (DICOMWEB_URL without DESTINATIONS).
type conditionallyRequired interface {
	missingRequired(getenv func(string) string) error
}

// dynamicVars is implemented by configuration whose variable names depend
// on other variables (ORTHANC_SOURCES names the ORTHANC_<NAME>_*
// variables). Load calls it after the declared variables are parsed and
// before Validate.
type dynamicVars interface {
	readDynamic(getenv func(string) string) error
}

// cleanEnvError turns the env library's aggregate error into one line per
// problem, each naming the variable (the library names the Go field).
func cleanEnvError(err error, t reflect.Type) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	keys := map[string][]string{}
	for _, v := range appendVars(nil, t) {
		keys[v.field] = append(keys[v.field], v.Name)
	}
	out := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) && len(keys[pe.Name]) > 0 {
			e = fmt.Errorf("%s: %w", strings.Join(keys[pe.Name], " or "), pe.Err)
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// Var describes one configuration variable for `-h` and the docs.
type Var struct {
	Name, Default, Description string
	Required, Secret           bool

	field string // Go field name, to translate the env library's errors
}

// Vars lists the variables that cfgs (pointers to structs) read, in
// declaration order.
func Vars(cfgs ...any) []Var {
	var out []Var
	for _, c := range cfgs {
		out = appendVars(out, reflect.TypeOf(c))
	}
	return out
}

func appendVars(out []Var, t reflect.Type) []Var {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Tag.Get("env") == "" {
			out = appendVars(out, f.Type)
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("env"), ",")
		if name == "" {
			continue
		}
		out = append(out, Var{
			Name:        name,
			Default:     f.Tag.Get("envDefault"),
			Description: f.Tag.Get("desc"),
			Required:    strings.Contains(opts, "required") || strings.Contains(opts, "notEmpty"),
			Secret:      f.Tag.Get("secret") == "true",
			field:       f.Name,
		})
	}
	return out
}

// Usage writes the variables cfgs read as a table, for `-h`.
func Usage(w io.Writer, program string, cfgs ...any) {
	fmt.Fprintf(w, "Usage: %s\n\nAll configuration comes from environment variables:\n\n", program)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tDESCRIPTION")
	for _, v := range Vars(cfgs...) {
		def := v.Default
		switch {
		case v.Required:
			def = "(required)"
		case def == "":
			def = "-"
		}
		desc := v.Description
		if v.Secret {
			desc += " (or " + v.Name + fileSuffix + ": a file holding it)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, def, desc)
	}
	tw.Flush()
}

func secretKeys(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for _, v := range appendVars(nil, t) {
		if v.Secret {
			out[v.Name] = true
		}
	}
	return out
}
