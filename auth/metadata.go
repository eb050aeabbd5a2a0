package auth

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"golang.org/x/oauth2"
)

// maxMetadataBody bounds a metadata-service answer; a token is a few KB.
const maxMetadataBody = 1 << 20

// GetMetadata GETs url from a cloud's instance metadata service (Azure
// IMDS, the GCE metadata server) with the one header that service
// requires, and returns the bounded body and the response headers. A
// non-200 answer is an *oauth2.RetrieveError carrying the service's
// error and error_description, when it sends them.
func GetMetadata(ctx context.Context, hc *http.Client, url, header, value string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set(header, value)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBody))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		re := &oauth2.RetrieveError{Response: resp, Body: body}
		var e struct {
			Code        string `json:"error"`
			Description string `json:"error_description"`
		}
		if json.Unmarshal(body, &e) == nil {
			re.ErrorCode, re.ErrorDescription = e.Code, e.Description
		}
		return nil, nil, re
	}
	return body, resp.Header, nil
}
