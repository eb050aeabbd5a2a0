package auth

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func TestInspect(t *testing.T) {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now()
	jwtTok := (&oauth2.Token{AccessToken: enc(map[string]string{"alg": "RS256"}) + "." +
		enc(map[string]any{"iss": "https://sts.windows.net/t/", "aud": "https://dicom.healthcareapis.azure.com", "roles": []string{"DICOM.Write"}, "appid": "app-1"}) + ".sig",
		TokenType: "Bearer", Expiry: now.Add(time.Hour)})
	info := Inspect(jwtTok, now)
	if !info.JWT || info.Issuer != "https://sts.windows.net/t/" || len(info.Audience) != 1 || info.Roles[0] != "DICOM.Write" ||
		info.ClientID != "app-1" || info.Lifetime != time.Hour || info.Type != "Bearer" {
		t.Errorf("JWT: %+v", info)
	}
	opaque := (&oauth2.Token{AccessToken: "ya29.opaque", Expiry: now.Add(time.Minute)}).WithExtra(map[string]any{"scope": "a b"})
	info = Inspect(opaque, now)
	if info.JWT || len(info.Scopes) != 2 || info.Lifetime != time.Minute {
		t.Errorf("opaque: %+v", info)
	}
	scp := &oauth2.Token{AccessToken: enc(map[string]string{}) + "." + enc(map[string]any{"scp": []string{"x", "y"}}) + ".s"}
	if info := Inspect(scp, now); len(info.Scopes) != 2 || info.Lifetime != 0 {
		t.Errorf("scp array: %+v", info)
	}
}
