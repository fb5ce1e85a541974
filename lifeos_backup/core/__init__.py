"""What every floor shares: errors, settings, names, file and process helpers, progress."""
