package config

// Admin holds the operators' credential, shared by every command: the
// forwarder's admin API (/admin/..., bearer token) and the ingest's status
// page (/ui, HTTP basic auth with the token as the password).
type Admin struct {
	AdminToken string `env:"ADMIN_TOKEN" secret:"true" desc:"operators' credential: bearer token of the forwarder's admin API (/admin/...: dead letters, replay) and password of the ingest's status page (/ui, HTTP basic auth, any user name); empty disables both"`
}

// Validate names the variable that is out of range.
func (a *Admin) Validate() error {
	if a.AdminToken == "" {
		return nil
	}
	return checkCredential("ADMIN_TOKEN", a.AdminToken, 16)
}
