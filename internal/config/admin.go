package config

import "errors"

// Admin holds the operators' credential, shared by every command: the
// forwarder's admin API (/admin/..., bearer token) and the ingest's status
// page (/ui, HTTP basic auth with the token as the password).
type Admin struct {
	AdminToken string `env:"ADMIN_TOKEN" secret:"true" desc:"operators' credential (not INGEST_TOKEN or INGEST_HMAC_SECRET): bearer token of the forwarder's admin API (/admin/...: dead letters, replay) and password of the ingest's status page (/ui, HTTP basic auth, any user name); empty disables both"`
}

// Validate names the variable that is out of range.
func (a *Admin) Validate() error {
	if a.AdminToken == "" {
		return nil
	}
	return errors.Join(checkCredential("ADMIN_TOKEN", a.AdminToken, 16), checkHeaderToken("ADMIN_TOKEN", a.AdminToken))
}

// apartFrom refuses an ADMIN_TOKEN equal to INGEST_TOKEN: the ingest
// token sits in Orthanc's configuration, where its Lua script reads it,
// and would open the status page and the admin API too; so would the
// signing secret, with every webhook sender.
func (a *Admin) apartFrom(i *Ingest) error {
	if a.AdminToken != "" && a.AdminToken == i.Token {
		return errors.New("ADMIN_TOKEN must differ from INGEST_TOKEN: the ingest token is in Orthanc's configuration, and would open the status page and the admin API")
	}
	if a.AdminToken != "" && a.AdminToken == i.PreviousToken {
		return errors.New("ADMIN_TOKEN must differ from INGEST_TOKEN_PREVIOUS: the ingest token is in Orthanc's configuration, and would open the status page and the admin API")
	}
	if a.AdminToken != "" && a.AdminToken == i.HMACSecret {
		return errors.New("ADMIN_TOKEN must differ from INGEST_HMAC_SECRET: the signing secret is with every webhook sender, and would open the status page and the admin API")
	}
	return nil
}
