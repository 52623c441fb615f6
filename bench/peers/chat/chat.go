// Package chat is the protocol logic the comparison peers share: parsing a
// client message, the join rules, and encoding a server message exactly as
// encoding/json does. Each peer owns its transport and fan-out; only the
// wire format lives here so the three servers speak the same SPEC §2.
package chat

import (
	"encoding/json"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

const (
	// System is the reserved sender of notices and errors.
	System = "System"
	// MaxName is the longest username in characters.
	MaxName = 32
	// MaxContent is the longest chat content in characters.
	MaxContent = 2000
	// MaxMessage bounds one inbound WebSocket message in bytes.
	MaxMessage = 16384
	// CloseBadJoin is the close code after a rejected join (policy).
	CloseBadJoin = 1008
)

// Out is a server message: exactly two keys, in this order.
type Out struct {
	Username string `json:"username"`
	Content  string `json:"content"`
}

// Encode returns the JSON of a server message, as encoding/json writes it
// (so "<" becomes \u003c, as from the original gorilla chat).
func Encode(user, content string) []byte {
	b, _ := json.Marshal(Out{Username: user, Content: content})
	return b
}

// Joined, Left and Error build the System messages.
func Joined(name string) []byte { return Encode(System, name+" joined the chat") }
func Left(name string) []byte   { return Encode(System, name+" left the chat") }
func Error(msg string) []byte   { return Encode(System, "Error: "+msg) }

// In is a client message. Pointers tell "absent" from "empty".
type In struct {
	Username *string `json:"username"`
	Content  *string `json:"content"`
}

// Parse decodes a client message; a non-nil error is an "Error:" text.
func Parse(p []byte) (In, string) {
	var m In
	if err := json.Unmarshal(p, &m); err != nil {
		return m, "Invalid message format"
	}
	return m, ""
}

// Join validates a first message and returns the trimmed username and the
// content to broadcast first (may be empty), or an error text.
func Join(p []byte) (name, content, errText string) {
	m, e := Parse(p)
	if e != "" {
		return "", "", e
	}
	if m.Username == nil || strings.TrimSpace(*m.Username) == "" {
		return "", "", "Username is required in first message"
	}
	name = strings.TrimSpace(*m.Username)
	if utf8.RuneCountInString(name) > MaxName {
		return "", "", "Username is too long"
	}
	for _, r := range name {
		if r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || (unicode.IsSpace(r) && r != ' ') {
			return "", "", "Username contains invalid characters"
		}
	}
	if strings.EqualFold(name, System) {
		return "", "", "Username is reserved"
	}
	if m.Content != nil {
		content = *m.Content
	}
	if e := checkContent(content); e != "" {
		return "", "", e
	}
	if strings.TrimSpace(content) == "" {
		content = ""
	}
	return name, content, ""
}

// Chat validates a message after the join and returns the content to
// broadcast as sent ("" means blank: ignore it) or an error text.
func Chat(p []byte) (content, errText string) {
	m, e := Parse(p)
	if e != "" {
		return "", e
	}
	if m.Content == nil {
		return "", ""
	}
	if e := checkContent(*m.Content); e != "" {
		return "", e
	}
	if strings.TrimSpace(*m.Content) == "" {
		return "", ""
	}
	return *m.Content, ""
}

func checkContent(c string) string {
	if utf8.RuneCountInString(c) > MaxContent {
		return "Content is too long"
	}
	return ""
}

// Names keeps usernames unique case-insensitively. Safe for concurrent use.
type Names struct {
	mu    sync.Mutex
	taken map[string]struct{}
}

// Key is the uniqueness key of a name.
func Key(name string) string { return strings.ToLower(name) }

// Claim reserves name; false if someone connected has it.
func (n *Names) Claim(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.taken == nil {
		n.taken = map[string]struct{}{}
	}
	k := Key(name)
	if _, ok := n.taken[k]; ok {
		return false
	}
	n.taken[k] = struct{}{}
	return true
}

// Release frees name.
func (n *Names) Release(name string) {
	n.mu.Lock()
	delete(n.taken, Key(name))
	n.mu.Unlock()
}
