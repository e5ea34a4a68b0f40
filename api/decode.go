package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"github.com/pgonce/pgonce/internal/problem"
)

// decodeJSON reads r's body into dst, answering the client's mistakes with a
// problem and false: 415 for a content type other than JSON, 413 for a body
// over the limit, 400 for malformed JSON, unknown fields or trailing data.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, dst any) bool {
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/json" {
		problem.Write(w, r, problem.New(http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type",
			"Send the request body as application/json."))
		return false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			problem.Write(w, r, problem.New(http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large",
				fmt.Sprintf("The body must be at most %d bytes.", s.cfg.MaxBodyBytes)))
			return false
		}
		problem.Write(w, r, problem.New(http.StatusBadRequest, "unreadable-body", "Unreadable request body", err.Error()))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		detail := err.Error()
		if errors.Is(err, io.EOF) {
			detail = "The body is empty; send a JSON object."
		}
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body", detail))
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body",
			"The body must hold exactly one JSON value."))
		return false
	}
	return true
}
