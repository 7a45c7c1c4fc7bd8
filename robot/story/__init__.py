"""The story side: prompts, the story session, sentence splitting, child safety, canned stories, resume."""
