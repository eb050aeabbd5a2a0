package deadletter

// SetMaxSent sets how many instances a part of l's records of stored
// instances holds: a record of many parts without a study of 120,000.
func SetMaxSent(l *FailureLog, n int) { l.maxSent = n }
