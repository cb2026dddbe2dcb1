from cohortgate.cli import main

main()
