-- PostgreSQL mirror of sqlite/0010_search_indexes.sql: these indexes exist since 0001 here.
SELECT 1;
