"""One picker as several processes (`llm-picker serve --workers N`): the group's layout
(`group`), the in-flight counts they share (`counts`), and the registry the primary process
mirrors to the others (`mirror`). Import the modules: the registry itself needs `counts`."""
