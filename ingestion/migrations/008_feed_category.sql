-- A feed's category: the folder it sits in (an OPML import's folders, joined with "/"; or
-- given when it is added), kept so that an OPML export puts it back in the same folder.
ALTER TABLE feeds ADD COLUMN category TEXT;
