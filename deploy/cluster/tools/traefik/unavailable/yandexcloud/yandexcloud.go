// Package yandexcloud is left out of this build: the SDK it calls is refused by the Go module
// proxy at the version lego pins. The name stays registered so a configuration naming it
// fails at startup with this message instead of the build failing.
package yandexcloud

import (
	"context"
	"errors"
)

// DNSProvider is never constructed: NewDNSProvider always fails.
type DNSProvider struct{}

// NewDNSProvider returns an error saying the provider is not in this build.
func NewDNSProvider() (*DNSProvider, error) {
	return nil, errors.New("yandexcloud: DNS challenge provider not included in this build (its SDK is not on the Go module proxy)")
}

// Present is never reached (no DNSProvider is ever returned).
func (*DNSProvider) Present(context.Context, string, string, string) error { return nil }

// CleanUp is never reached (no DNSProvider is ever returned).
func (*DNSProvider) CleanUp(context.Context, string, string, string) error { return nil }
