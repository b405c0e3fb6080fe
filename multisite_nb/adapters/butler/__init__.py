"""The toolkit's door to the Butlers: repositories (:mod:`.repo`), queries over sky units and bound id
lists (:mod:`.queries`), dimension records (:mod:`.dimensions`), datasets as files from the
datastore's records (:mod:`.datastore`, the only use of private daf_butler API), and the campaign's
operator lock kept in the central repository (:mod:`.lock`)."""
