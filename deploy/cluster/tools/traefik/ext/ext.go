// Package ext stands in for Traefik's extension module, which lives as a nested module in
// Traefik's repository (pkg/config/dynamic/ext) and so is absent from the v3 module zip
// the Go proxy serves. Traefik's open-source build embeds these two types inline in its
// dynamic configuration with nothing in them; an empty struct here gives the same
// configuration schema.
package ext

// HTTP is embedded in Traefik's dynamic HTTP configuration; empty in the open-source build.
type HTTP struct{}

// Router is embedded in Traefik's dynamic router configuration; empty in the open-source build.
type Router struct{}
