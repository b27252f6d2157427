// Package store keeps key/value pairs in memory with a read-write lock.
package store

import "sync"

// Store is a concurrency-safe map from string keys to byte values.
type Store struct {
	mu   sync.RWMutex
	data map[string][]byte
}

// New returns an empty Store.
func New() *Store {
	return &Store{data: make(map[string][]byte)}
}

// Get returns the value for key and whether it was present.
func (s *Store) Get(key string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	value, ok := s.data[key]
	return value, ok
}

// Put stores value under key, replacing any previous value.
func (s *Store) Put(key string, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = value
}
