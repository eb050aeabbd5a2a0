package auth

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// TokenInfo is what can be said about an access token without showing it:
// for `forwarder check`, logs and the status page.
type TokenInfo struct {
	Type     string
	Expiry   time.Time // zero: the server gave no lifetime
	Lifetime time.Duration
	// Scopes are the granted scopes: the token response's scope, else the
	// JWT's scp or scope claim.
	Scopes []string
	// Roles are the JWT's roles claim (Entra application permissions).
	Roles []string
	// JWT claims, when the access token is a JWT (read, not verified).
	JWT      bool
	Issuer   string
	Audience []string
	ClientID string // azp, appid or client_id
}

// Inspect describes tok as of now. It never returns the token itself.
func Inspect(tok *oauth2.Token, now time.Time) TokenInfo {
	if tok == nil {
		return TokenInfo{}
	}
	info := TokenInfo{Type: tok.Type(), Expiry: tok.Expiry}
	if !tok.Expiry.IsZero() {
		info.Lifetime = tok.Expiry.Sub(now)
	}
	if s, ok := tok.Extra("scope").(string); ok {
		info.Scopes = strings.Fields(s)
	}
	var claims struct {
		Issuer   string          `json:"iss"`
		Audience json.RawMessage `json:"aud"`
		Scp      json.RawMessage `json:"scp"`
		Scope    json.RawMessage `json:"scope"`
		Roles    []string        `json:"roles"`
		AZP      string          `json:"azp"`
		AppID    string          `json:"appid"`
		ClientID string          `json:"client_id"`
	}
	parts := strings.Split(tok.AccessToken, ".")
	if len(parts) != 3 {
		return info
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil {
		return info
	}
	info.JWT = true
	info.Issuer = claims.Issuer
	info.Audience = words(claims.Audience)
	info.Roles = claims.Roles
	info.ClientID = claims.AZP
	if info.ClientID == "" {
		info.ClientID = claims.AppID
	}
	if info.ClientID == "" {
		info.ClientID = claims.ClientID
	}
	if len(info.Scopes) == 0 {
		info.Scopes = words(claims.Scp)
	}
	if len(info.Scopes) == 0 {
		info.Scopes = words(claims.Scope)
	}
	return info
}

// words reads a claim that is a space-separated string or a string array.
func words(raw json.RawMessage) []string {
	if len(raw) == 0 {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return strings.Fields(s)
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return list
	}
	return nil
}
