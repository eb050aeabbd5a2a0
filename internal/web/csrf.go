package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
)

// csrfCookie holds a random nonce; the forms carry its HMAC under a key
// derived from the admin token. A cross-site page can neither read the
// cookie nor compute the HMAC, and a cookie planted from a sibling domain
// fails the HMAC. SameSite=Strict and the Origin / Sec-Fetch-Site check
// (http.CrossOriginProtection) come first.
const (
	csrfCookie = "stowline_ui_csrf"
	csrfField  = "csrf"
)

var errCSRF = errors.New("the form is stale or did not come from this page: reload the page and try again")

type csrf struct {
	key    []byte
	origin *http.CrossOriginProtection
}

func newCSRF(adminToken string) *csrf {
	k := sha256.Sum256([]byte("stowline status page csrf\x00" + adminToken))
	return &csrf{key: k[:], origin: http.NewCrossOriginProtection()}
}

// token returns the form token of this browser, setting its nonce cookie
// first if it has none.
func (c *csrf) token(w http.ResponseWriter, r *http.Request) string {
	nonce := ""
	if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) >= 26 { // rand.Text: 128 bits
		nonce = ck.Value
	} else {
		nonce = rand.Text()
		http.SetCookie(w, &http.Cookie{
			Name: csrfCookie, Value: nonce, Path: basePath,
			HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
		})
	}
	return c.mac(nonce)
}

func (c *csrf) mac(nonce string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(nonce))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// check verifies a state-changing request: same origin, and a form token
// matching the nonce cookie. Call it after r.ParseForm.
func (c *csrf) check(r *http.Request) error {
	if err := c.origin.Check(r); err != nil {
		return fmt.Errorf("cross-origin request refused: %w", err)
	}
	ck, err := r.Cookie(csrfCookie)
	if err != nil || ck.Value == "" {
		return errCSRF
	}
	if !hmac.Equal([]byte(r.PostFormValue(csrfField)), []byte(c.mac(ck.Value))) {
		return errCSRF
	}
	return nil
}
