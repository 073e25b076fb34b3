"""The nightly chain: eligible_sessions → resolved_settings → bills → autopay_attempts →
delivery_queue, with superbills and statements feeding delivery_queue."""
