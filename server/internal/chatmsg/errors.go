package chatmsg

// Error is a chat protocol error. Its text is what the offending client
// receives after "Error: ", so it is a fixed sentence, capitalized for
// people, and never echoes user input.
type Error string

func (e Error) Error() string { return string(e) }

// Chat protocol errors.
const (
	ErrNotObject        Error = "Message must be a JSON object"
	ErrBadJSON          Error = "Invalid JSON"
	ErrWrongType        Error = "username and content must be strings"
	ErrUnknownField     Error = "Unknown field: only username and content are allowed"
	ErrUsernameRequired Error = "Username is required in first message"
	ErrUsernameLength   Error = "Username must be 1-32 characters"
	ErrUsernameChars    Error = "Username contains invalid characters"
	ErrUsernameReserved Error = "Username is reserved"
	ErrUsernameTaken    Error = "Username is already taken"
	ErrContentTooLong   Error = "Content is too long"
	ErrRateLimited      Error = "Rate limit exceeded, slow down"
	ErrTooManyErrors    Error = "Too many errors"
	ErrServerBusy       Error = "Server busy, message not sent"
)
